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
from torch.nn.parallel import DistributedDataParallel

__all__ = ["all_reduce_sum", "init_from_env", "world_and_rank", "wrap"]


def world_and_rank() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP around one twin (its forward must go through the wrapper for the gradient hooks)."""
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    # buffers are identical on every rank (same model, same init): no per-forward buffer sync
    return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor); identity on one process."""
    world, _ = world_and_rank()
    if world == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
