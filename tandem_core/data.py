"""The data contract between data sources (adapters) and trainers (backends): batches and samplers.

A batch is a dict of host numpy arrays (backends move it to their device):

- ``tokens``: int32 ``(B, T)`` input token ids in ``[0, vocab_size)``.
- ``labels``: int32 ``(B, T)`` target ids aligned with ``tokens`` (``labels[:, t]`` is scored
  against the logits at position ``t``); ``IGNORE_INDEX`` marks positions not scored (padding).
- ``domain``: int32 ``(B,)`` domain index in ``[0, M)`` (validation batches: the val domain).

A sampler is seeded and resumable: its ``state_dict`` (JSON-serialisable) restores the exact stream
of batches. It keeps one random stream per method, so evaluating never shifts the training batches.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["IGNORE_INDEX", "Batch", "BatchSampler", "check_batch", "scored_counts", "split_rows"]

IGNORE_INDEX = -100
Batch = dict  # {"tokens": (B, T) int32, "labels": (B, T) int32, "domain": (B,) int32}


@runtime_checkable
class BatchSampler(Protocol):
    """Per-domain batches for training, mixture sampling, validation and Delta evaluation."""

    domains: tuple[str, ...]  # training domain names, length M
    val_domains: tuple[str, ...]  # validation domain names (the M domains, or a separate target)
    seq_len: int  # T
    vocab_size: int

    def train_batch(self, per_domain: int) -> Batch:
        """``M * per_domain`` rows; rows ``[m * b, (m + 1) * b)`` are domain ``m``'s (DoGE)."""

    def mixture_batch(self, alpha: np.ndarray, size: int) -> Batch:
        """``size`` rows whose domains are drawn from ``alpha (M,)`` (sampling in proportion)."""

    def val_batch(self, size: int) -> Batch:
        """``size`` validation rows stratified over ``val_domains`` (round-robin remainder)."""

    def eval_batch(self, per_domain: int) -> Batch:
        """Like ``train_batch`` from an independent stream: the batches Delta is evaluated on."""

    def validation_sets(self, max_per_domain: int) -> list[Batch]:
        """One deterministic batch per validation domain (at most ``max_per_domain`` rows each)."""

    def domain_sizes(self) -> list[int]:
        """Training tokens per domain (for natural / temperature mixtures)."""

    def state_dict(self) -> dict:
        """JSON-serialisable position and RNG states."""

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``; the following batches equal those of the saved run."""


def check_batch(
    batch: Any, *, num_domains: int | None = None, vocab_size: int | None = None
) -> Batch:
    """Validate a batch on the host, naming the problem; returns it with int32 arrays.

    Args:
        batch: mapping with ``tokens (B, T)``, ``labels (B, T)``, ``domain (B,)``.
        num_domains: if given, every ``domain`` must be in ``[0, num_domains)``.
        vocab_size: if given, every token and non-ignored label must be in ``[0, vocab_size)``.

    Returns:
        ``{"tokens", "labels", "domain"}`` as int32 numpy arrays.

    Raises:
        ValueError: missing keys, wrong ranks or shapes, non-integer dtypes, out-of-range ids.
    """
    missing = {"tokens", "labels", "domain"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing {sorted(missing)}; it needs tokens, labels, domain")
    out = {k: np.asarray(batch[k]) for k in ("tokens", "labels", "domain")}
    for key, value in out.items():
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"batch[{key!r}] must hold integers, got dtype {value.dtype}")
    tokens, labels, domain = out["tokens"], out["labels"], out["domain"]
    if tokens.ndim != 2:
        raise ValueError(f"batch['tokens'] must have shape (B, T), got {tokens.shape}")
    if labels.shape != tokens.shape:
        raise ValueError(f"batch['labels'] has shape {labels.shape}, tokens have {tokens.shape}")
    if domain.shape != (tokens.shape[0],):
        raise ValueError(
            f"batch['domain'] must have shape ({tokens.shape[0]},), got {domain.shape}"
        )
    if (
        num_domains is not None
        and domain.size
        and (domain.min() < 0 or domain.max() >= num_domains)
    ):
        bad = int(domain[(domain < 0) | (domain >= num_domains)][0])
        raise ValueError(f"domain id {bad} is outside [0, {num_domains})")
    if vocab_size is not None:
        scored = labels[labels != IGNORE_INDEX]
        for key, ids in (("tokens", tokens), ("labels", scored)):
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
                raise ValueError(f"batch[{key!r}] holds token id {bad} outside [0, {vocab_size})")
    return {k: v.astype(np.int32, copy=False) for k, v in out.items()}


def scored_counts(batch: Batch, num_domains: int) -> np.ndarray:
    """Per-domain count of rows with at least one scored label: float64 ``(M,)`` (host).

    The denominators of the mixture objective for a whole batch, known before it is split over
    ranks or micro-batches.
    """
    scored = (np.asarray(batch["labels"]) != IGNORE_INDEX).any(axis=1)
    return np.bincount(np.asarray(batch["domain"])[scored], minlength=num_domains).astype(
        np.float64
    )


def split_rows(batch: Batch, parts: int, *, rank: int = 0, world: int = 1) -> list[Batch]:
    """This rank's rows (``rank::world``), cut into ``parts`` micro-batches of near-equal size.

    Raises:
        ValueError: fewer rows than ``world * parts`` (a rank or micro-batch would be empty).
    """
    rows = len(batch["domain"])
    if rows < world * parts:
        raise ValueError(
            f"a batch of {rows} rows cannot feed {world} rank(s) x {parts} micro-batches"
        )
    mine = np.arange(rank, rows, world)
    return [
        {k: np.asarray(v)[idx] for k, v in batch.items()} for idx in np.array_split(mine, parts)
    ]
