"""The torch ``Backend``: ``index_add`` segment sum, ``torch.distributed`` sums, deep copies."""

from __future__ import annotations

import copy
from typing import Any

import array_api_compat.torch as xp_torch
import torch
import torch.distributed as dist


class TorchBackend:
    """PyTorch backend (CPU / CUDA; gloo or NCCL when ``torch.distributed`` is initialised)."""

    name = "torch"
    xp = xp_torch
    TwinTrainer = None  # filled by the trainer module

    def segment_sum(
        self, data: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
    ) -> torch.Tensor:
        """``index_add`` segment sum: ``data (B, ...)``, ``segment_ids (B,)`` -> ``(M, ...)``."""
        out = data.new_zeros((num_segments,) + tuple(data.shape[1:]))
        return out.index_add(0, segment_ids.to(torch.long), data)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks when ``torch.distributed`` is initialised, else identity."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            x = x.clone()
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def copy_state(self, state: Any) -> Any:
        """Deep copy sharing no storage: parameters and optimizer state, for twin sync."""
        return copy.deepcopy(state)
