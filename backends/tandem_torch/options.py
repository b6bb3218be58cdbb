"""The ``[backend]`` table of the torch backend: devices, threads, processes, compile, fusing."""

from __future__ import annotations

from dataclasses import dataclass

from tandem_core import ConfigError
from tandem_core.methods import check_fields

__all__ = ["TorchOptions"]


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

    def __post_init__(self) -> None:
        check_fields(self, positive=("nproc",), nonnegative=("threads",), prefix="backend.")
        if self.fsdp and self.compile:
            raise ConfigError("backend.compile is not supported with backend.fsdp")
