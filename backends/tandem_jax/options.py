"""The ``[backend]`` table of the JAX backend."""

from __future__ import annotations

from dataclasses import dataclass

from tandem_core.methods import check_fields

__all__ = ["JaxOptions"]


@dataclass(frozen=True)
class JaxOptions:
    """How JAX runs a job: devices of the data axis, multi-host runtime, fused twins."""

    devices: int = 0  # devices of the "data" mesh axis (0 or 1: one device, no sharding)
    distributed: bool = False  # jax.distributed.initialize() (one process per host)
    fuse_twins: bool = False  # both twins' forwards as one vmapped forward
    # deterministic XLA kernels on GPU (--xla_gpu_deterministic_ops, set before JAX starts its
    # backends); CPU runs are deterministic already
    deterministic: bool = True

    def __post_init__(self) -> None:
        check_fields(self, nonnegative=("devices",), prefix="backend.")
