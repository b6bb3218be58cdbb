"""Batches on device: this rank's micro-batches of a global batch, and per-domain statistics.

Every rank sees the same global batch and keeps its rows ``rank::world``; the mixture objective
divides by the WHOLE batch's per-domain counts, so micro-batches and ranks add up to one big
batch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

import tandem_core as tc

__all__ = ["Split", "as_tensor", "domain_stats", "merge", "segment_sum", "split_batch", "to_device"]


class Split(NamedTuple):
    """A global batch as this rank's micro-batches on device, with the whole batch's counts."""

    parts: list[dict[str, torch.Tensor]]  # micro-batches of this rank's rows (rank::world)
    counts: torch.Tensor  # (M,) float: rows with a scored label per domain, whole batch


def to_device(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of host (numpy) arrays or tensors on ``device``, dtypes kept."""
    return {k: as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}


def split_batch(
    batch: dict,
    num_domains: int,
    *,
    parts: int,
    rank: int,
    world: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Split:
    """This rank's ``parts`` micro-batches of a global batch, and the whole batch's counts.

    Args:
        batch: ``tokens``, ``labels`` ``(B, T)`` and ``domain`` ``(B,)`` (and optional columns),
            host arrays or tensors.
        num_domains: M, the range of ``batch["domain"]``.
        parts: micro-batches (gradient accumulation).
        rank: this rank.
        world: ranks.
        dtype: float dtype of the counts.
        device: where the micro-batches go.

    Returns:
        ``Split(parts, counts (M,))``; tensors on ``device``. A host batch is cut on the host,
        a tensor batch on its device (no value is read).
    """
    if not any(isinstance(v, torch.Tensor) for v in batch.values()):
        counts = torch.as_tensor(tc.scored_counts(batch, num_domains), dtype=dtype)
        cut = tc.split_rows(batch, parts, rank=rank, world=world)
        return Split([to_device(p, device) for p in cut], counts.to(device))
    whole = to_device(batch, device)
    rows = len(whole["domain"])
    if rows < world * parts:
        raise ValueError(
            f"a batch of {rows} rows cannot feed {world} rank(s) x {parts} micro-batches"
        )
    scored = (whole["labels"] != tc.IGNORE_INDEX).any(-1).to(dtype)
    counts = segment_sum(scored, whole["domain"], num_domains)
    mine = torch.arange(rank, rows, world, device=device)
    return Split([{k: v[i] for k, v in whole.items()} for i in mine.tensor_split(parts)], counts)


def domain_stats(
    losses: torch.Tensor, scored: torch.Tensor, ids: torch.Tensor, m: int
) -> tc.DomainStats:
    """Per-domain sums and counts ``(M,)`` of per-sample ``losses (B,)``.

    Rows with ``scored (B,) > 0`` scored labels are counted; ``ids (B,)`` are trusted (no host
    check: the run loop checks batches on the host).
    """
    counts = (scored > 0).to(losses.dtype)
    return tc.domain_stats(losses, ids, m, counts=counts, checked=False, segment_sum=segment_sum)


def merge(acc: Any, stats: Any) -> Any:
    """``stats`` (detached) added to the running ``acc`` (``None``: the first)."""
    stats = tc.tree_map(lambda a: a.detach(), stats)
    return stats if acc is None else tc.merge_stats(acc, stats)


def segment_sum(data: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``index_add`` segment sum: ``data (B, ...)``, ``ids (B,)`` -> ``(num_segments, ...)``."""
    return data.new_zeros((num_segments, *data.shape[1:])).index_add(0, ids.long(), data)


def as_tensor(value: Any) -> torch.Tensor:
    """A tensor as it is; a numpy (or nested) array as a CPU tensor."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
