"""``StreamedDomain``: one domain read from a document iterator through a bounded token buffer.

The domain is never tokenized whole. The stream holds whole documents (each followed by EOS)
up to ``capacity`` tokens; the sampler draws its rows from them (the ``draw_starts`` hook of
``data.windows``). Once ``refill_tokens`` tokens have been drawn, the oldest documents, at
least ``refill_tokens`` tokens of them, make room for the next ones, so every token is drawn
about once while it is held. At the end of the data the iterator starts again (a new epoch,
counted in ``epochs``). A domain smaller than the buffer is held whole and never refilled.

Position: ``state_dict()`` is the source position before the oldest held document, the number
of documents held and the draw counters; ``load_state_dict`` reads those documents again (at
most ``capacity`` tokens), so the following rows equal those of an uninterrupted run.

The source is a function ``open_rows(position)`` giving an iterator of ``(text, after)``:
each document and the JSON-serialisable position after it, starting at ``position`` (None:
the start of the data). ``data.hf`` builds it from a ``datasets.IterableDataset``.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from .corpus import DataError
from .streams import tokenize_documents
from .windows import random_starts

__all__ = ["STREAM_STATE_VERSION", "StreamedDomain"]

STREAM_STATE_VERSION = 1
OpenRows = Callable[[Any], Iterator[tuple[str, Any]]]


class _Doc(NamedTuple):
    tokens: np.ndarray  # (n,) the document and its EOS, at most `capacity` tokens
    before: Any  # the source position before it (None: the start of an epoch)
    epoch: int  # the pass over the data it was read in


class StreamedDomain:
    """A 1-D token stream (``shape``, ``dtype``, ``stream[idx]``) over a bounded buffer.

    Args:
        open_rows: ``open_rows(position) -> iterator of (text, position_after)`` (see the
            module docstring).
        tokenizer: ``encode(text) -> list[int]`` and ``eos_id``.
        capacity: most tokens held; a longer document keeps its first ``capacity`` tokens.
        dtype: the token dtype.
        refill_tokens: drawn tokens between refills (default ``capacity // 8``).
        documents: the domain's document count if the source knows it (``domain_tokens``).
        where: what error messages name.
    """

    ndim = 1

    def __init__(
        self,
        open_rows: OpenRows,
        tokenizer: Any,
        *,
        capacity: int,
        dtype: Any = np.uint16,
        refill_tokens: int | None = None,
        documents: int | None = None,
        where: str = "stream",
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 tokens, got {capacity}")
        self._open = open_rows
        self._tokenizer = tokenizer
        self.capacity = int(capacity)
        self.dtype = np.dtype(dtype)
        self.refill_tokens = int(refill_tokens or max(1, capacity // 8))
        self.where = where
        self.refills = 0  # how often the oldest documents were replaced
        self._reset(position=None, epoch=0)
        self._fill()
        # fixed at load, so a resumed run computes the same natural mixture
        held, docs = self.shape[0], len(self._docs)
        self.domain_tokens = held if documents is None else round(documents * held / docs)

    def _reset(self, position: Any, epoch: int) -> None:
        self._docs: deque[_Doc] = deque()
        self._held = 0
        self._drawn = 0  # tokens drawn since the last refill
        self._position = position  # where the next document is read from
        self._epoch = epoch
        self._rows: Iterator | None = None
        self._ahead: _Doc | None = None  # read, but it did not fit yet
        self.whole = False  # the buffer holds the whole domain: nothing to refill

    @property
    def shape(self) -> tuple[int]:
        """``(n,)``: the tokens held now."""
        return (int(self._tokens.shape[0]),)

    @property
    def epochs(self) -> int:
        """Restarts of the data so far (of the newest document held)."""
        return self._docs[-1].epoch

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> Any:
        return self._tokens[idx]

    def _read(self) -> _Doc | None:
        """The next document; None at the end of a domain the buffer holds whole."""
        if self._ahead is not None:
            doc, self._ahead = self._ahead, None
            return doc
        for restart in (False, True):
            if self._rows is None:
                self._rows = self._open(self._position)
            for text, after in self._rows:
                tokens = tokenize_documents([text], self._tokenizer, self.dtype)
                if tokens.shape[0] == 0:
                    continue
                doc = _Doc(tokens[: self.capacity], self._position, self._epoch)
                self._position = after
                return doc
            first = self._docs[0] if self._docs else None
            if first is not None and first.before is None and first.epoch == self._epoch:
                return None  # the whole pass is held: repeating it would only duplicate
            if restart:
                break
            self._rows, self._position = None, None
            self._epoch += 1
        raise DataError(f"{self.where}: no documents")

    def _fill(self, limit: int | None = None) -> None:
        """Append documents while they fit (or until ``limit`` documents are held)."""
        while limit is None or len(self._docs) < limit:
            doc = self._read()
            if doc is None:
                self.whole = True
                break
            if self._docs and self._held + doc.tokens.shape[0] > self.capacity:
                self._ahead = doc
                break
            self._docs.append(doc)
            self._held += doc.tokens.shape[0]
        self._tokens = np.concatenate([d.tokens for d in self._docs])

    def _refill(self, tokens: int) -> None:
        """Drop the oldest documents (at least ``tokens`` tokens of them), then fill up."""
        dropped = 0
        while self._docs and dropped < tokens:
            dropped += self._docs.popleft().tokens.shape[0]
        self._held -= dropped
        self._fill()
        self.refills += 1

    def draw_starts(self, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` uniform starts ``(count,)`` int64 in the buffer, refilled first if due."""
        due = self._drawn // self.refill_tokens
        if due and not self.whole:
            self._refill(min(due * self.refill_tokens, self.capacity))
        self._drawn %= self.refill_tokens
        starts = random_starts(self.shape[0], seq_len, count, rng)
        self._drawn += count * (seq_len + 1)
        return starts

    def state_dict(self) -> dict:
        """JSON-serialisable position: where the oldest held document starts, and counters."""
        first = self._docs[0]
        return {
            "version": STREAM_STATE_VERSION,
            "position": copy.deepcopy(first.before),
            "epoch": first.epoch,
            "documents": len(self._docs),
            "drawn": self._drawn,
            "refills": self.refills,
            "whole": self.whole,
        }

    def load_state_dict(self, state: dict) -> None:
        """Hold again the documents ``state`` names (at most ``capacity`` tokens are re-read).

        Raises:
            ValueError: not a ``StreamedDomain`` state.
        """
        if not isinstance(state, dict) or state.get("version") != STREAM_STATE_VERSION:
            raise ValueError(f"not a StreamedDomain state (version {STREAM_STATE_VERSION})")
        try:
            epoch, docs = int(state["epoch"]), int(state["documents"])
            drawn, refills = int(state["drawn"]), int(state["refills"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"StreamedDomain state is missing or invalid: {err}") from err
        self._reset(position=copy.deepcopy(state.get("position")), epoch=epoch)
        self._fill(limit=docs)
        self._drawn, self.refills = drawn, refills
        self.whole = bool(state.get("whole", False))  # reading up to the limit cannot tell
