"""Turn per-domain parts (documents or pre-tokenized arrays) into a checked ``DomainCorpus``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .corpus import DataError, DomainCorpus
from .tokenizer import ByteTokenizer

__all__ = ["Part", "build_corpus", "id_range", "tokenize_documents"]

# A part of a domain: (where, data), with data a list of documents (str) or a 1-D integer array;
# ``where`` (a file, or "domain 'x'") is what error messages name.
Part = tuple[str, list[str] | np.ndarray]
_CHUNK = 1 << 22  # scan memmaps in chunks so no full copy is ever made


def id_range(stream: np.ndarray) -> tuple[int, int]:
    """``(min, max)`` token id of a 1-D integer array, read in chunks (memmap-friendly)."""
    lo, hi = None, None
    for start in range(0, stream.shape[0], _CHUNK):
        chunk = stream[start : start + _CHUNK]
        c_lo, c_hi = int(chunk.min()), int(chunk.max())
        lo = c_lo if lo is None else min(lo, c_lo)
        hi = c_hi if hi is None else max(hi, c_hi)
    return (0, -1) if lo is None else (lo, hi)


def tokenize_documents(docs: Sequence[str], tokenizer: Any, dtype: Any) -> np.ndarray:
    """Tokenize ``docs`` and join them, each followed by ``tokenizer.eos_id`` (if not None).

    Args:
        docs: documents; empty ones are skipped (they would only add lone EOS tokens).
        tokenizer: anything with ``encode(text) -> list[int]`` and ``eos_id``.
        dtype: numpy integer dtype of the result.

    Returns:
        The 1-D stream ``(n,)`` of ``dtype`` (possibly empty).
    """
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    docs = [d for d in docs if d]
    batch = getattr(tokenizer, "encode_batch", None)  # parallel in `tokenizers`, if available
    if batch is None:
        encoded = (tokenizer.encode(d) for d in docs)
    else:
        encoded = (ids for i in range(0, len(docs), 1024) for ids in batch(docs[i : i + 1024]))
    pieces = [np.asarray(ids + eos, dtype=dtype) for ids in encoded]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def _check_array(where: str, data: Any) -> np.ndarray:
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(
            f"{where}: pre-tokenized data must be a 1-D integer array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def _resolve_vocab(arrays: list[tuple[str, np.ndarray]], tokenizer: Any, vocab_size: Any) -> int:
    """Explicit ``vocab_size``, else the tokenizer's, else max id + 1 of the arrays."""
    ranges = [(where, *id_range(arr)) for where, arr in arrays]
    hint = f" (vocab_size={vocab_size} was given)"
    if vocab_size is None:
        hi = max((h for _, _, h in ranges), default=-1)
        vocab_size = tokenizer.vocab_size if tokenizer is not None else hi + 1
        hint = (
            f", the vocabulary of {tokenizer!r}: pre-tokenized ids must come from the "
            "tokenizer that reads the text (data.tokenizer, or tokenizer= in Python)"
        )
    elif tokenizer is not None and vocab_size < tokenizer.vocab_size:
        raise DataError(
            f"vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    for where, lo, hi in ranges:
        if lo < 0 or hi >= vocab_size:
            bad, why = (lo, "") if lo < 0 else (hi, hint)
            raise DataError(f"{where}: token id {bad} is outside [0, {vocab_size}){why}")
    return int(vocab_size)


def _stream(name: str, kind: str, parts: list[Part], tokenizer: Any, dtype: Any) -> np.ndarray:
    pieces = [
        data if isinstance(data, np.ndarray) else tokenize_documents(data, tokenizer, dtype)
        for _, data in parts
    ]
    pieces = [p for p in pieces if p.shape[0]]
    if not pieces or sum(p.shape[0] for p in pieces) < 2:
        sources = ", ".join(where for where, _ in parts) or "no files"
        raise DataError(f"{kind} domain {name!r} is empty: no tokens in {sources}")
    # A single pre-tokenized part stays as is (a memmap stays a memmap).
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def build_corpus(
    train: dict[str, list[Part]],
    val: dict[str, list[Part]],
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    known_answer: dict | None = None,
) -> DomainCorpus:
    """Check every part, tokenize the documents, and build the corpus (domains in dict order).

    Args:
        train: domain name -> parts of its training stream, in order.
        val: validation domain name -> parts (empty for no validation data).
        tokenizer: used for document parts; None means ``ByteTokenizer()`` if any part is text.
        vocab_size: explicit vocabulary size; else the tokenizer's (given, or the byte default
            when there is text), else max token id + 1 (pre-tokenized data only).
        known_answer: passed through to ``DomainCorpus``.

    Returns:
        The ``DomainCorpus``.

    Raises:
        DataError: a token id outside ``[0, vocab_size)`` (names the part and the id), an empty
            domain (names the domain), a non-1-D or non-integer array.
    """
    all_parts = [
        (n, k, p) for k, d in (("training", train), ("validation", val)) for n, p in d.items()
    ]
    has_text = any(isinstance(data, list) for _, _, p in all_parts for _, data in p)
    if tokenizer is None and has_text:
        tokenizer = ByteTokenizer()
    checked = {
        (name, kind): [(w, d if isinstance(d, list) else _check_array(w, d)) for w, d in parts]
        for name, kind, parts in all_parts
    }
    arrays = [(w, d) for parts in checked.values() for w, d in parts if isinstance(d, np.ndarray)]
    vocab = _resolve_vocab(arrays, tokenizer, vocab_size)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32  # tokenized text: compact ids
    streams = {key: _stream(*key, parts, tokenizer, dtype) for key, parts in checked.items()}
    return DomainCorpus(
        domains=tuple(train),
        train=tuple(streams[(n, "training")] for n in train),
        val_domains=tuple(val),
        val=tuple(streams[(n, "validation")] for n in val),
        vocab_size=vocab,
        known_answer=known_answer,
    )
