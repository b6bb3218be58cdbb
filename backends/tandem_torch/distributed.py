"""Data parallelism with torch.distributed: process groups, DDP-wrapped twins, sums over ranks.

Every rank samples the same global batch (same seed) and keeps its rows ``rank::world``. The
mixture objective divides by the WHOLE batch's per-domain counts (``tandem_core.scored_counts``),
so each rank's loss is a part of one sum: DDP's gradient all-reduce (an average, hence the loss is
scaled by the world size) gives exactly the single-process gradient, and every rank applies the
same update. Statistics for the mixture cross ranks in ONE all-reduce of the packed vector.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "all_reduce_sum",
    "any_rank",
    "default_device",
    "full",
    "init_from_env",
    "local",
    "shard_like",
    "world_and_rank",
    "wrap",
]


def world_and_rank() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def default_device(name: str = "") -> torch.device:
    """``name`` if given, else this process's GPU (``cuda:LOCAL_RANK`` under torchrun) or CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE > 1``): gloo CPU, NCCL CUDA.

    Returns:
        Whether this process runs distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def wrap(module: nn.Module, device: torch.device, *, fsdp: bool = False) -> nn.Module:
    """DDP around one twin, or (``fsdp``) FSDP2 ``fully_shard`` of it in place.

    DDP: the forward must go through the returned wrapper for the gradient hooks. FSDP: each
    transformer block (a child ``nn.ModuleList``'s entries) and then the whole model are sharded
    over the ranks, parameters, gradients and optimizer state alike; the module itself is
    returned (its parameters are now ``DTensor`` shards: build optimizers after this call).
    """
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for child in module.modules():
            if isinstance(child, nn.ModuleList):
                for block in child:
                    fully_shard(block)
        fully_shard(module)
        return module
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # buffers are identical on every rank (same model, same init): no per-forward buffer sync
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def local(x: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (in-place ops on it change the DTensor); else ``x``."""
    return x.to_local() if isinstance(x, DTensor) else x


def full(x: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` (a collective, on device); else ``x``."""
    return x.full_tensor() if isinstance(x, DTensor) else x


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, equal on every rank) laid out as ``like`` (DTensor or not)."""
    if isinstance(like, DTensor):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            value.to(like.device, like.dtype), like.device_mesh, like.placements
        )
    return value


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor); identity on one process."""
    world, _ = world_and_rank()
    if world == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (one all-reduce of one int; ``flag`` on one process).

    ``device``: where the process group reduces (CUDA for NCCL). Every rank must call it.
    """
    world, _ = world_and_rank()
    if world == 1:
        return flag
    x = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.cpu()[0])
