"""``DomainCorpus``: one token stream per training domain and per validation domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DataError", "DomainCorpus"]


class DataError(ValueError):
    """Malformed or unusable input data; the message names the file and line, or the domain."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class DomainCorpus:
    """Tokenized training and validation data, one 1-D stream per domain (nanoGPT-style).

    A domain's documents are tokenized and joined into one stream, each followed by the
    tokenizer's EOS id (if it has one). Streams may be numpy memmaps (pre-tokenized files).

    Validation is either per domain (``val_domains == domains``, the paper's default: L_val is
    the mean over the M domains) or a separate target set whose domains need not appear in
    training (e.g. ``val_domains == ("target",)``), or empty (no validation data).

    Attributes:
        domains: training domain names, length M.
        train: M token streams, each 1-D integer ``(n_m,)`` with ``n_m >= 2`` and ids in
            ``[0, vocab_size)``.
        val_domains: validation domain names, length V (may be 0).
        val: V validation streams, same rules as ``train``.
        vocab_size: size of the token id space.
        known_answer: for synthetic suites, what a good mixture looks like (see ``make_suite``).
    """

    domains: tuple[str, ...]
    train: tuple[Any, ...]  # 1-D numpy arrays / memmaps, or array-like streams (data.windows)
    val_domains: tuple[str, ...]
    val: tuple[Any, ...]
    vocab_size: int
    known_answer: dict | None = None

    def __post_init__(self) -> None:
        for name in ("domains", "train", "val_domains", "val"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.domains:
            raise DataError("a corpus needs at least one training domain")
        if int(self.vocab_size) < 1:
            raise DataError(f"vocab_size must be >= 1, got {self.vocab_size}")
        for kind, names, streams in (
            ("training", self.domains, self.train),
            ("validation", self.val_domains, self.val),
        ):
            if len(names) != len(streams):
                raise DataError(f"{len(names)} {kind} domain names but {len(streams)} streams")
            if len(set(names)) != len(names):
                raise DataError(f"duplicate {kind} domain names in {list(names)}")
            for name, stream in zip(names, streams):
                _check_stream(stream, f"{kind} domain {name!r}")

    @property
    def num_domains(self) -> int:
        """M, the number of training domains."""
        return len(self.domains)

    @property
    def per_domain_validation(self) -> bool:
        """True when each training domain has its own validation stream (same names, order)."""
        return self.val_domains == self.domains

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}={len(s)}" for d, s in zip(self.domains, self.train))
        vals = ", ".join(f"{d}={len(s)}" for d, s in zip(self.val_domains, self.val))
        return f"DomainCorpus(train[{sizes}], val[{vals}], vocab_size={self.vocab_size})"


def _check_stream(stream: Any, where: str) -> None:
    """Cheap structural checks (no scan of the values, which may be a large memmap).

    A stream is a 1-D integer numpy array, or an object that behaves like one for integer-array
    indexing (``shape``, ``ndim``, ``dtype``, ``__getitem__``; see ``data.windows``).
    """
    if getattr(stream, "ndim", None) != 1 or not hasattr(stream, "__getitem__"):
        raise DataError(f"{where}: token stream must be a 1-D numpy array or array-like")
    if not np.issubdtype(stream.dtype, np.integer):
        raise DataError(f"{where}: token stream must hold integers, got dtype {stream.dtype}")
    if stream.shape[0] < 2:  # one input and one label at least
        raise DataError(f"{where}: has {stream.shape[0]} tokens, needs at least 2")
