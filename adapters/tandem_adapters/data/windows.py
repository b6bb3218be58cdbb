"""Cut ``(tokens, labels)`` rows of length T from a 1-D token stream.

A stream is a 1-D integer numpy array (or memmap), or any object that behaves like one for
integer-array indexing (``shape``, ``ndim``, ``dtype``, ``stream[int array]``): sharded token
files read lazily, packed instruction data. Such an object may refine how rows are cut through
optional hooks, which ``cut_rows``, ``draw_starts`` and ``first_starts`` call when present:

- ``stream.loss_mask``: a parallel 1-D bool array-like; ``loss_mask[i] == False`` means token
  ``i`` is never a label (e.g. a prompt token in supervised fine-tuning): its label position
  becomes ``IGNORE_INDEX``.
- ``stream.windows(starts, seq_len) -> (tokens, labels)``: the stream cuts its own rows (e.g.
  rows that stop at a document boundary).
- ``stream.draw_starts(seq_len, count, rng) -> (count,) int64``: random starts (e.g. only at
  document starts, or per shard).
- ``stream.first_starts(seq_len, max_rows) -> int64``: the deterministic validation starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem_core import IGNORE_INDEX

__all__ = [
    "cut_rows",
    "draw_starts",
    "first_starts",
    "random_starts",
    "sequential_starts",
    "windows",
]


def windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``w = stream[s : s + T + 1]`` split into ``tokens = w[:-1]``, ``labels = w[1:]``.

    Positions past the end of the stream are padding: token 0 and label ``IGNORE_INDEX``.
    Only the windows are read, so ``stream`` may be a large memmap.

    Args:
        stream: 1-D integer token stream ``(n,)``, ``n >= 1``.
        starts: int64 ``(B,)`` window starts in ``[0, n)``.
        seq_len: T.

    Returns:
        ``(tokens, labels)``, each int32 ``(B, T)``.
    """
    n = stream.shape[0]
    offsets = starts[:, None] + np.arange(seq_len + 1)
    valid = offsets < n
    w = np.asarray(stream[np.minimum(offsets, n - 1)]).astype(np.int64)
    tokens = np.where(valid[:, :-1], w[:, :-1], 0).astype(np.int32)
    labels = np.where(valid[:, 1:], w[:, 1:], IGNORE_INDEX).astype(np.int32)
    return tokens, labels


def random_starts(n: int, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` uniform starts of full windows; all 0 (one padded row) if ``n < T + 1``.

    A short stream draws nothing from ``rng``, so its padded row costs no randomness.
    """
    if n < seq_len + 1:
        return np.zeros(count, dtype=np.int64)
    return rng.integers(0, n - seq_len, size=count, dtype=np.int64)


def sequential_starts(n: int, seq_len: int, max_rows: int) -> np.ndarray:
    """Starts ``0, T, 2T, ...`` of the first non-overlapping windows (at most ``max_rows``).

    Every label position ``1..n-1`` is covered exactly once when ``max_rows`` allows it; the
    last window may be padded. A stream with ``n < T + 1`` gives one padded row.
    """
    rows = max(1, -(-(n - 1) // seq_len))  # ceil((n - 1) / T)
    return np.arange(min(rows, max_rows), dtype=np.int64) * seq_len


def cut_rows(stream: Any, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``windows`` for any stream: its own ``windows`` hook, then its ``loss_mask`` applied.

    Args:
        stream: a 1-D token stream (array or stream object, see the module docstring).
        starts: int64 ``(B,)`` window starts.
        seq_len: T.

    Returns:
        ``(tokens, labels)``, each int32 ``(B, T)``; labels of masked tokens are ``IGNORE_INDEX``.
    """
    own = getattr(stream, "windows", None)
    tokens, labels = own(starts, seq_len) if callable(own) else windows(stream, starts, seq_len)
    mask = getattr(stream, "loss_mask", None)
    if mask is not None:
        n = stream.shape[0]
        positions = np.minimum(starts[:, None] + np.arange(1, seq_len + 1), n - 1)
        keep = np.asarray(mask[positions], dtype=bool)
        labels = np.where(keep, labels, IGNORE_INDEX).astype(np.int32)
    return tokens, labels


def draw_starts(stream: Any, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random window starts: the stream's ``draw_starts`` hook, else ``random_starts``."""
    own = getattr(stream, "draw_starts", None)
    if callable(own):
        return np.asarray(own(seq_len, count, rng), dtype=np.int64)
    return random_starts(stream.shape[0], seq_len, count, rng)


def first_starts(stream: Any, seq_len: int, max_rows: int) -> np.ndarray:
    """Deterministic validation starts: the ``first_starts`` hook, else ``sequential_starts``."""
    own = getattr(stream, "first_starts", None)
    if callable(own):
        return np.asarray(own(seq_len, max_rows), dtype=np.int64)
    return sequential_starts(stream.shape[0], seq_len, max_rows)
