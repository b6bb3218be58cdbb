"""The ``[backend]`` table of the torch backend: devices, threads, processes, compile, fusing."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tandem_core import ConfigError
from tandem_core.methods import check_fields

__all__ = ["TorchOptions"]

DEVICE_TYPES = ("cpu", "cuda", "mps")
CHECKPOINT_FORMATS = ("npz", "sharded")


def _max_threads() -> int:
    """The largest ``backend.threads``: 4 x the CPUs, at most 1024 (torch crashes far above)."""
    return min(4 * (os.cpu_count() or 1), 1024)


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs a job (validated; errors name ``backend.KEY``)."""

    device: str = ""  # "" = CUDA if available (cuda:LOCAL_RANK under torchrun), else CPU
    threads: int = 0  # torch.set_num_threads (0: torch's default)
    nproc: int = 1  # data-parallel processes (the job re-runs itself under torchrun)
    compile: bool = False  # torch.compile the loss functions
    fuse_twins: bool = False  # both twins' losses in one vmapped forward (one process)
    fsdp: bool = False  # shard the twins with FSDP2 instead of DDP (nproc > 1)
    # deterministic kernels: the same seed, config and thread count give a bit-identical run
    # (multi-threaded CPU and CUDA scatter/index-add kernels otherwise add in varying order)
    deterministic: bool = True
    # "npz": one file of whole tensors by rank 0; "sharded": each rank writes its own shards
    # (torch.distributed.checkpoint, no full gather; see sharded.py)
    checkpoint: str = "npz"

    def __post_init__(self) -> None:
        check_fields(self, positive=("nproc",), nonnegative=("threads",), prefix="backend.")
        if self.threads > _max_threads():
            raise ConfigError(
                f"backend.threads={self.threads} is more than {_max_threads()} (4 x the "
                f"{os.cpu_count()} CPUs here, at most 1024); 0 leaves torch's default"
            )
        if self.checkpoint not in CHECKPOINT_FORMATS:
            raise ConfigError(
                f"backend.checkpoint={self.checkpoint!r} is not one of {CHECKPOINT_FORMATS}"
            )
        if self.fsdp and self.compile:
            raise ConfigError("backend.compile is not supported with backend.fsdp")
        if self.device:
            _check_device(self.device)


def _check_device(name: str) -> None:
    """``ConfigError`` naming ``backend.device`` unless torch can use device ``name`` here."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(
            f"backend.device={name!r} is not a device the torch backend runs on: use "
            "'cpu', 'cuda', 'cuda:N' or 'mps' (empty: CUDA if available, else CPU)"
        )
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU found"
            raise ConfigError(
                f"backend.device={name!r}: CUDA is not available here ({why}); use "
                "backend.device='cpu' or leave it empty"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(f"backend.device={name!r}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"backend.device={name!r}: MPS (Apple GPU) is not available here")
