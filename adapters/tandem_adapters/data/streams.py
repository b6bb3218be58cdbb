"""Turn per-domain parts (documents or pre-tokenized arrays) into a checked ``DomainCorpus``.

Token files are not read whole at load. Up to ``FULL_SCAN_TOKENS`` pre-tokenized tokens in all,
every id is checked here; above that, the vocabulary bound comes from metadata (an explicit
``vocab_size``, else the tokenizer's) or, failing both, from max id + 1 of a bounded sample
(``SAMPLE_TOKENS`` spread over the files), and the streams check the ids each batch reads
(``ShardedStream``, see ``data.shards``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .corpus import DataError, DomainCorpus
from .shards import DocumentStream, Shard, ShardedStream, eos_documents, file_offset
from .tokenizer import ByteTokenizer

__all__ = ["Part", "build_corpus", "id_range", "tokenize_documents"]

# A part of a domain: (where, data), with data a list of documents (str) or a 1-D integer array;
# ``where`` (a file, or "domain 'x'") is what error messages name.
Part = tuple[str, list[str] | np.ndarray]
_CHUNK = 1 << 22  # scan memmaps in chunks so no full copy is ever made
FULL_SCAN_TOKENS = 1 << 24  # up to this many pre-tokenized tokens, every id is checked at load
SAMPLE_TOKENS = 1 << 20  # above it: the vocabulary sample, spread over the files
_SAMPLE_BLOCKS = 64  # blocks per file in the sample
WINDOWS = ("span", "documents")


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


def _check_array(where: str, data: Any) -> Any:
    if isinstance(data, ShardedStream):  # built by a reader, already 1-D integer
        return data
    arr = data if isinstance(data, np.ndarray) else np.asarray(data)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise DataError(
            f"{where}: pre-tokenized data must be a 1-D integer array, "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return arr


def sample_ids(stream: Any, budget: int) -> np.ndarray:
    """Up to ``budget`` ids of a 1-D stream ``(n,)``: all if it fits, else evenly spread blocks."""
    n = stream.shape[0]
    if n <= budget:
        return np.asarray(stream[:])
    size = max(1, budget // _SAMPLE_BLOCKS)
    starts = np.linspace(0, n - size, _SAMPLE_BLOCKS).astype(np.int64)
    return np.concatenate([np.asarray(stream[s : s + size]) for s in starts])


def _ranges(arrays: list[tuple[str, Any]]) -> tuple[list[tuple[str, int, int]], bool]:
    """``(where, lo, hi)`` per array, and whether every id was read (else a bounded sample)."""
    total = sum(arr.shape[0] for _, arr in arrays)
    if total <= FULL_SCAN_TOKENS:
        return [(where, *id_range(arr)) for where, arr in arrays], True
    out = []
    for where, arr in arrays:
        ids = sample_ids(arr, max(_SAMPLE_BLOCKS, SAMPLE_TOKENS * arr.shape[0] // total))
        out.append((where, *((int(ids.min()), int(ids.max())) if ids.size else (0, -1))))
    return out, False


def _resolve_vocab(
    arrays: list[tuple[str, Any]], tokenizer: Any, vocab_size: Any
) -> tuple[int, str, bool]:
    """``(V, note, full)``: explicit ``vocab_size``, else the tokenizer's, else max id + 1.

    ``full`` says every id was checked; otherwise the ids come from a sample and ``note`` is
    what an out-of-range message at batch time adds (where the bound came from).
    """
    ranges, full = _ranges(arrays)
    hint = f" (vocab_size={vocab_size} was given)"
    if vocab_size is None:
        hi = max((h for _, _, h in ranges), default=-1)
        vocab_size = tokenizer.vocab_size if tokenizer is not None else hi + 1
        hint = (
            f", the vocabulary of {tokenizer!r}: pre-tokenized ids must come from the "
            "tokenizer that reads the text (data.tokenizer, or tokenizer= in Python)"
            if tokenizer is not None
            else f" (max id + 1 of a {SAMPLE_TOKENS}-token sample: give the tokenizer "
            "(data.tokenizer) or vocab_size to set the bound)"
            if not full
            else ""
        )
    elif tokenizer is not None and vocab_size < tokenizer.vocab_size:
        raise DataError(
            f"vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    for where, lo, hi in ranges:
        if lo < 0 or hi >= vocab_size:
            bad, why = (lo, "") if lo < 0 else (hi, hint)
            raise DataError(f"{where}: token id {bad} is outside [0, {vocab_size}){why}")
    return int(vocab_size), hint, full


def _shards(where: str, data: Any, eos_id: Any) -> list[Shard]:
    """The shards of one part: a reader's ``ShardedStream``, or one array (text: EOS docs)."""
    if isinstance(data, ShardedStream):
        return list(data.shards)
    if isinstance(data, np.memmap):  # a file (or a split's view of one): boundaries unknown
        return [Shard(where, data, offset=file_offset(data))]
    docs = None if eos_id is None else eos_documents(data, eos_id)  # in memory: cheap
    return [Shard(where, data, documents=docs)]


def _stream(
    name: str,
    kind: str,
    parts: list[Part],
    tokenizer: Any,
    dtype: Any,
    *,
    vocab: tuple[int, str, bool] = (0, "", True),
    windows: str = "span",
) -> Any:
    eos = getattr(tokenizer, "eos_id", None)
    pieces = [
        (w, d if not isinstance(d, list) else tokenize_documents(d, tokenizer, dtype))
        for w, d in parts
    ]
    pieces = [(w, p) for w, p in pieces if p.shape[0]]
    if not pieces or sum(p.shape[0] for _, p in pieces) < 2:
        sources = ", ".join(where for where, _ in parts) or "no files"
        raise DataError(f"{kind} domain {name!r} is empty: no tokens in {sources}")
    size, note, full = vocab
    arrays = [p for _, p in pieces]
    if windows == "span" and full and all(isinstance(p, np.ndarray) for p in arrays):
        # Every id was checked at load: a single part stays as is (a memmap stays a memmap);
        # in-memory pieces (tokenized text) are small and joined as before.
        if len(arrays) == 1 or not any(isinstance(p, np.memmap) for p in arrays):
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    shards = [s for w, p in pieces for s in _shards(w, p, eos)]
    if windows == "span":
        return ShardedStream(shards, vocab_size=size, vocab_note=note)
    unknown = [s.where for s in shards if s.documents is None]
    if unknown:  # found now, at load; the boundaries themselves are read on first use
        raise DataError(
            f"{unknown[0]}: data.windows='documents' needs document boundaries, which this "
            "file does not record (nanoGPT .bin, .npy); use Megatron .bin + .idx, text files "
            "with an EOS token, or data.windows='span'"
        )
    return DocumentStream(shards, vocab_size=size, vocab_note=note)


def build_corpus(
    train: dict[str, list[Part]],
    val: dict[str, list[Part]],
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    known_answer: dict | None = None,
    windows: str = "span",
) -> DomainCorpus:
    """Check every part, tokenize the documents, and build the corpus (domains in dict order).

    Args:
        train: domain name -> parts of its training stream, in order.
        val: validation domain name -> parts (empty for no validation data).
        tokenizer: used for document parts; None means ``ByteTokenizer()`` if any part is text.
        vocab_size: explicit vocabulary size; else the tokenizer's (given, or the byte default
            when there is text), else max token id + 1 (pre-tokenized data only).
        known_answer: passed through to ``DomainCorpus``.
        windows: ``"span"`` (rows may cross documents) or ``"documents"`` (they never do;
            needs boundaries: Megatron ``.idx`` or tokenized text). See ``data.shards``.

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
    arrays = [(w, d) for parts in checked.values() for w, d in parts if not isinstance(d, list)]
    if windows not in WINDOWS:
        raise DataError(f"data.windows={windows!r} is not one of {WINDOWS}")
    resolved = _resolve_vocab(arrays, tokenizer, vocab_size)
    vocab = resolved[0]
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32  # tokenized text: compact ids
    streams = {
        key: _stream(*key, parts, tokenizer, dtype, vocab=resolved, windows=windows)
        for key, parts in checked.items()
    }
    return DomainCorpus(
        domains=tuple(train),
        train=tuple(streams[(n, "training")] for n in train),
        val_domains=tuple(val),
        val=tuple(streams[(n, "validation")] for n in val),
        vocab_size=vocab,
        known_answer=known_answer,
    )
