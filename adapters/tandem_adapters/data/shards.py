"""``ShardedStream``: one domain's token stream over many token files, indexed without reading them.

A domain folder may hold any number of token shards (nanoGPT ``.bin``, ``.npy``, raw dolma arrays,
Megatron ``.bin`` + ``.idx``). Joining them with ``np.concatenate`` would copy the whole corpus
into anonymous memory; a ``ShardedStream`` keeps each shard memory-mapped and maps a global
index to ``(shard, offset)`` with ``np.searchsorted`` over the cumulative lengths, so a batch
reads only its own windows (see ``data.windows`` for the stream protocol the sampler uses).

Token ids are checked when they are read: the ids a batch gathers are compared with the
vocabulary bound, and an id outside it raises ``DataError`` naming the file and the token
offset within that file. No full scan is made at load time (``data.streams``: the bound).

Two ways to cut rows (``data.windows``):

- ``"span"`` (``ShardedStream``): windows are plain slices of the joined stream and may cross
  documents and shards, exactly as if the shards had been concatenated.
- ``"documents"`` (``DocumentStream``): a row never crosses a document boundary (nor a shard
  boundary). A document is drawn with probability proportional to its number of windows, then
  an offset in it; a document shorter than T + 1 gives one row padded with ``IGNORE_INDEX``.
  Document boundaries come from Megatron's ``.idx``, dolma's ``.csv.gz`` metadata next to a raw
  ``.npy`` (``dolma_documents``), or the EOS ids of tokenized text.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tandem_core import IGNORE_INDEX

from .corpus import DataError

__all__ = [
    "DocumentStream",
    "Shard",
    "ShardedStream",
    "dolma_documents",
    "eos_documents",
    "file_offset",
]

MAX_ARRAY_TOKENS = 1 << 24  # np.asarray(stream) above this is a whole-corpus read: refused


@dataclass(frozen=True)
class Shard:
    """One token file (or a view of one) inside a ``ShardedStream``.

    Attributes:
        where: the file, named in error messages.
        tokens: 1-D integer array ``(n,)``, usually a memmap (never read whole).
        offset: token offset of ``tokens[0]`` within the file (non-zero for a split's tail).
        documents: None, or a zero-argument callable giving the file's document starts, int64
            ``(D,)`` token offsets within the file, sorted (read lazily: ``data.windows``).
    """

    where: str
    tokens: Any
    offset: int = 0
    documents: Callable[[], np.ndarray] | None = None


def file_offset(tokens: np.ndarray) -> int:
    """Token offset of a view's first element within the array it was sliced from (0 if none).

    Slicing a memmap gives a view; its distance from the outermost array of its ``base`` chain,
    in items, is its offset within the file's tokens (what an error message should name).
    """
    root = tokens
    while isinstance(root.base, np.ndarray):
        root = root.base
    if root is tokens or tokens.size == 0:
        return 0
    delta = tokens.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return int(delta // tokens.itemsize)


def eos_documents(tokens: np.ndarray, eos_id: int) -> Callable[[], np.ndarray]:
    """Document starts of an in-memory token array: 0 and every position after an EOS id."""

    def starts() -> np.ndarray:
        ends = np.flatnonzero(np.asarray(tokens) == eos_id) + 1
        return np.concatenate([[0], ends[ends < tokens.shape[0]]]).astype(np.int64)

    return starts


def dolma_documents(meta: Path, n: int) -> Callable[[], np.ndarray]:
    """Lazy document starts of a dolma array from its ``.csv.gz`` metadata (rows ``start,end,...``).

    dolma's tokenizer writes one row per document, in file order, with the token span
    ``[start, end)`` first; the later columns (id, source, line) are not needed here.

    Args:
        meta: the ``X.csv.gz`` written next to ``X.npy``.
        n: the array's length in tokens.

    Returns:
        A callable giving int64 ``(D,)`` sorted document starts in ``[0, n)``.
    """

    def starts() -> np.ndarray:
        out, last = [], 0
        with gzip.open(meta, "rt", encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                try:
                    start, end = int(row[0]), int(row[1])
                except (IndexError, ValueError):
                    raise DataError(f"{meta}:{lineno}: expected a 'start,end,...' row") from None
                if not last <= start <= end <= n:  # dolma writes documents back to back
                    raise DataError(
                        f"{meta}:{lineno}: document span [{start}, {end}) is out of order or "
                        f"outside the {n}-token array"
                    )
                out.append(start)
                last = end
        return np.array([s for s in out if s < n], dtype=np.int64)

    return starts


class ShardedStream:
    """A 1-D token stream made of shards, indexed lazily (the ``data.windows`` stream protocol).

    Args:
        shards: the shards, in stream order (empty ones are dropped).
        vocab_size: ids must lie in ``[0, vocab_size)``; checked on every read (None: no check).
        vocab_note: appended to an out-of-range message (where the bound came from).

    Attributes:
        shape: ``(total,)``; ``ndim`` is 1; ``dtype`` is the widest shard dtype.
        starts: int64 ``(S + 1,)`` cumulative shard lengths (``starts[s]`` = first index of s).
    """

    def __init__(
        self, shards: Sequence[Shard], *, vocab_size: int | None = None, vocab_note: str = ""
    ) -> None:
        self.shards = tuple(s for s in shards if s.tokens.shape[0])
        lengths = [s.tokens.shape[0] for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        self.shape = (int(self.starts[-1]),)
        self.ndim = 1
        dtypes = [s.tokens.dtype for s in self.shards]
        self.dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.int64)
        self.vocab_size = vocab_size
        self.vocab_note = vocab_note

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.shards)} shards, {self.shape[0]} tokens)"

    def with_vocab(self, vocab_size: int | None, note: str = "") -> ShardedStream:
        """The same shards (same class) checked against another vocabulary bound."""
        return type(self)(self.shards, vocab_size=vocab_size, vocab_note=note)

    def view(self, start: int, stop: int) -> ShardedStream:
        """Tokens ``[start, stop)`` as a stream of the same class: shard views, nothing read."""
        out = []
        for s, shard in enumerate(self.shards):
            lo = max(start - int(self.starts[s]), 0)
            hi = min(stop - int(self.starts[s]), shard.tokens.shape[0])
            if lo < hi:
                out.append(replace(shard, tokens=shard.tokens[lo:hi], offset=shard.offset + lo))
        return type(self)(out, vocab_size=self.vocab_size, vocab_note=self.vocab_note)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return self._gather(np.arange(*key.indices(self.shape[0]), dtype=np.int64))
        if isinstance(key, (int, np.integer)):
            return self._gather(np.asarray([key], dtype=np.int64))[0]
        index = np.asarray(key)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"a ShardedStream takes int, slice or integer-array keys, got {key!r}")
        return self._gather(index.reshape(-1).astype(np.int64)).reshape(index.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if self.shape[0] > MAX_ARRAY_TOKENS:  # a silent whole-corpus read is the bug to catch
            raise ValueError(
                f"np.asarray of a {self.shape[0]}-token ShardedStream would read it whole; "
                "index or slice it instead"
            )
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _gather(self, flat: np.ndarray) -> np.ndarray:
        """``stream[flat]`` for int64 ``(k,)`` global indices: per-shard fancy reads, checked."""
        n = self.shape[0]
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"index out of range for a stream of {n} tokens")
        out = np.empty(flat.shape, dtype=self.dtype)
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for s in np.unique(which):
            rows = np.flatnonzero(which == s)
            local = flat[rows] - self.starts[s]
            if local.size > 1 and np.all(np.diff(local) == 1):  # a run: one contiguous read
                values = np.asarray(self.shards[s].tokens[local[0] : local[-1] + 1])
            else:
                values = np.asarray(self.shards[s].tokens[local])
            self._check(s, local, values)
            out[rows] = values
        return out

    def _check(self, s: int, local: np.ndarray, values: np.ndarray) -> None:
        """Raise ``DataError`` naming the file and offset of the first id outside the vocab."""
        if self.vocab_size is None or values.size == 0:
            return
        if values.min() >= 0 and values.max() < self.vocab_size:
            return
        first = int(np.flatnonzero((values < 0) | (values >= self.vocab_size))[0])
        shard = self.shards[s]
        raise DataError(
            f"{shard.where}: token id {int(values[first])} at token offset "
            f"{shard.offset + int(local[first])} is outside [0, {self.vocab_size})"
            f"{self.vocab_note}"
        )


class DocumentStream(ShardedStream):
    """A ``ShardedStream`` whose rows never cross a document (or shard) boundary.

    Every shard must carry ``documents`` (Megatron ``.idx``, or EOS ids of tokenized text).
    Implements the ``data.windows`` hooks ``draw_starts``, ``first_starts`` and ``windows``.
    """

    def __init__(self, shards: Sequence[Shard], **kw: Any) -> None:
        super().__init__(shards, **kw)
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    def documents(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)``, int64 ``(D,)`` global document bounds (read once, then cached)."""
        if self._bounds is None:
            self._bounds = _document_bounds(self.shards, self.starts)
        return self._bounds

    def draw_starts(self, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` starts, uniform over all in-document windows (int64 ``(count,)``)."""
        starts, ends = self.documents()
        weight = np.where(ends - starts >= 2, np.maximum(ends - starts - seq_len, 1), 0)
        cum = np.cumsum(weight)
        if cum[-1] == 0:  # only one-token documents: one padded row each
            return np.zeros(count, dtype=np.int64) + starts[0]
        u = rng.integers(0, cum[-1], size=count, dtype=np.int64)
        doc = np.searchsorted(cum, u, side="right")
        return starts[doc] + (u - (cum[doc] - weight[doc]))

    def first_starts(self, seq_len: int, max_rows: int) -> np.ndarray:
        """The first non-overlapping windows of each document in order (at most ``max_rows``)."""
        starts, ends = self.documents()
        rows = np.maximum(-(-(ends - starts - 1) // seq_len), 1)
        take = int(np.searchsorted(np.cumsum(rows), max_rows)) + 1  # documents needed
        out = [s + np.arange(r, dtype=np.int64) * seq_len for s, r in zip(starts[:take], rows)]
        return np.concatenate(out)[:max_rows]

    def windows(self, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows cut at the end of their document: int32 ``(B, T)`` tokens and labels."""
        doc_starts, doc_ends = self.documents()
        end = doc_ends[np.searchsorted(doc_starts, starts, side="right") - 1]
        offsets = starts[:, None] + np.arange(seq_len + 1)
        valid = offsets < end[:, None]
        w = self[np.minimum(offsets, end[:, None] - 1)].astype(np.int64)
        tokens = np.where(valid[:, :-1], w[:, :-1], 0).astype(np.int32)
        labels = np.where(valid[:, 1:], w[:, 1:], IGNORE_INDEX).astype(np.int32)
        return tokens, labels


def _document_bounds(shards: Sequence[Shard], starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global ``(starts, ends)`` of every document; a shard's start is always a boundary."""
    begin = []
    for s, shard in enumerate(shards):
        if shard.documents is None:
            raise DataError(
                f"{shard.where}: data.windows='documents' needs document boundaries, which "
                "this file does not record; use Megatron .bin + .idx, dolma .npy + .csv.gz, "
                "text files, or data.windows='span'"
            )
        local = np.asarray(shard.documents(), dtype=np.int64) - shard.offset
        local = local[(local > 0) & (local < shard.tokens.shape[0])]
        begin.append(np.concatenate([[0], local]) + starts[s])
    doc_starts = np.unique(np.concatenate(begin)).astype(np.int64)
    doc_ends = np.append(doc_starts[1:], starts[-1]).astype(np.int64)
    return doc_starts, doc_ends
