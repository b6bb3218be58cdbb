"""Cut ``(tokens, labels)`` rows of length T from a 1-D token stream."""

from __future__ import annotations

import numpy as np

from tandem_core import IGNORE_INDEX

__all__ = ["random_starts", "sequential_starts", "windows"]


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
