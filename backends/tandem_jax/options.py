"""The ``[backend]`` table of the JAX backend."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tandem_core import ConfigError
from tandem_core.methods import check_fields

__all__ = ["JaxOptions"]

CHECKPOINT_FORMATS = ("npz", "sharded")


@dataclass(frozen=True)
class JaxOptions:
    """How JAX runs a job: devices of the data axis, multi-host runtime, fused twins, format."""

    # devices of each process on the "data" mesh axis (0 or 1: one each); the mesh spans every
    # process of a jax.distributed job (one process with one device: no mesh)
    devices: int = 0
    distributed: bool = False  # jax.distributed.initialize() (one process per host)
    # the multi-host job, when JAX cannot detect it (SLURM, Open MPI, TPU pods and GKE it can);
    # empty or -1: the environment variable, else JAX detects it
    coordinator: str = ""  # "host:port" of process 0 (else $JAX_COORDINATOR_ADDRESS)
    num_processes: int = -1  # processes in the job (else $JAX_NUM_PROCESSES)
    process_id: int = -1  # this process's index (else $JAX_PROCESS_ID)
    fuse_twins: bool = False  # both twins' forwards as one vmapped forward
    # deterministic XLA kernels on GPU (--xla_gpu_deterministic_ops, set before JAX starts its
    # backends); CPU runs are deterministic already
    deterministic: bool = True
    # "npz": one file of whole arrays by process 0; "sharded": every process writes its shards
    # with orbax (orbax-checkpoint; see checkpoint.py)
    checkpoint: str = "npz"

    def __post_init__(self) -> None:
        check_fields(self, nonnegative=("devices",), prefix="backend.")
        if self.checkpoint not in CHECKPOINT_FORMATS:
            raise ConfigError(
                f"backend.checkpoint={self.checkpoint!r} is not one of {CHECKPOINT_FORMATS}"
            )

    def cluster(self) -> dict[str, Any]:
        """``jax.distributed.initialize`` keywords: the fields, else the environment, else none."""
        env = os.environ
        found = {
            "coordinator_address": self.coordinator or env.get("JAX_COORDINATOR_ADDRESS", ""),
            "num_processes": _index(self.num_processes, "JAX_NUM_PROCESSES"),
            "process_id": _index(self.process_id, "JAX_PROCESS_ID"),
        }
        return {k: v for k, v in found.items() if v not in ("", -1)}


def _index(value: int, name: str) -> int:
    """``value`` unless -1, else the integer in ``$name``, else -1 (JAX detects it)."""
    if value != -1:
        return value
    text = os.environ.get(name, "")
    if not text.strip().isdigit():
        if text:
            raise ConfigError(f"${name}={text!r} is not a non-negative integer")
        return -1
    return int(text)
