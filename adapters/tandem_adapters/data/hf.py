"""``load_hf_dataset``: a Hugging Face ``datasets`` dataset saved on local disk -> ``DomainCorpus``.

``stream_hf_dataset``: the same dataset streamed, one bounded ``StreamedDomain`` per domain.
``stream_documents``: one domain's documents from an ``IterableDataset``, resumable.

``load_hf_dataset`` tokenizes each split once into the token cache (``data.cache``): one
entry per domain, keyed by the content of every file in the dataset folder, the split, the
domain and text fields, the tokenizer and the token options, plus a list of the domains
written last (an entry set exists only when that list does). Later runs memory-map them.

Optional: needs the ``datasets`` package. Only local data is read (``load_from_disk`` on a
``save_to_disk`` directory, or ``load_dataset(..., streaming=True)`` on local files); nothing
is downloaded.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .cache import TokenCache, content_hash, entry_key, make_cache, token_dtype
from .corpus import DataError, DomainCorpus
from .readers import resolve_tokenizer, split_parts
from .streamed import OpenRows, StreamedDomain
from .streams import Part, build_corpus, tokenize_documents
from .text import text_kind
from .tokenizer import ByteTokenizer

__all__ = ["DocumentStream", "load_hf_dataset", "stream_documents", "stream_hf_dataset"]

DEFAULT_BUFFER_TOKENS = 1 << 20

# `datasets` builders of the local files a stream can read (``data.text`` names the suffixes)
_BUILDERS = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".jsonl.zst": "json",
    ".parquet": "parquet",
    ".txt": "text",
}


def _open_splits(path: str | Path, train_split: str, caller: str) -> tuple[Path, Any]:
    """``(path, {split: Dataset})`` of a local ``save_to_disk`` folder (one ``Dataset``: train)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"{caller} needs `datasets`: pip install datasets") from err
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: dataset directory not found (only local datasets are read)")
    data = datasets.load_from_disk(str(path))
    return path, data if isinstance(data, datasets.DatasetDict) else {train_split: data}


def _documents(ds: Any, where: str, domain_field: str | None, text_field: str) -> dict:
    """Domain name -> list of documents, domains sorted by name (one ``where`` if no field)."""
    fields = [f for f in (domain_field, text_field) if f is not None]
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r}; columns: {ds.column_names}")
    docs: dict[str, list[str]] = {}
    row = 0
    for batch in ds.select_columns(fields).iter(batch_size=1024):
        names = batch[domain_field] if domain_field else ["target"] * len(batch[text_field])
        for name, text in zip(names, batch[text_field]):
            if not isinstance(text, str):
                raise DataError(f"{where} row {row}: {text_field!r} is {type(text).__name__}")
            docs.setdefault(str(name), []).append(text)
            row += 1
    if not docs:
        raise DataError(f"{where}: the dataset has no rows")
    return {name: docs[name] for name in sorted(docs)}


def load_hf_dataset(
    path: str | Path,
    *,
    domain_field: str,
    text_field: str = "text",
    tokenizer: Any = None,
    train_split: str = "train",
    val_split: str | None = None,
    target_split: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    vocab_size: int | None = None,
    cache_dir: str | Path | None = None,
) -> DomainCorpus:
    """Read a local ``save_to_disk`` dataset whose rows carry a domain label and a text.

    Args:
        path: the local dataset directory (a ``Dataset`` or a ``DatasetDict``).
        domain_field: column with the domain of each row (values become names via ``str``).
        text_field: column with the document text.
        tokenizer: None (``ByteTokenizer``), a ``tokenizer.json`` path, or a tokenizer object.
        train_split: split used for training when ``path`` holds a ``DatasetDict``.
        val_split: split with the same domains -> per-domain validation.
        target_split: split used as a separate target set (grouped by ``domain_field`` if the
            split has that column, else one domain ``"target"``).
        val_fraction: in ``(0, 1)``: hold out this share of each domain's documents instead.
        seed: seed of the ``val_fraction`` split.
        vocab_size: explicit vocabulary size (default: the tokenizer's).
        cache_dir: tokenize each split once into this token cache and memory-map it on
            later loads (``data.cache_dir``, see ``data.cache.resolve_cache_dir``); None:
            no cache. Not used with ``val_fraction``, whose split draws whole documents.

    Returns:
        The ``DomainCorpus``; domains sorted by name.

    Raises:
        ImportError: ``datasets`` is not installed.
        DataError: missing directory, split or column; non-string text; empty domain.
        ValueError: more than one validation option.
    """
    chosen = [n for n, v in (("val_split", val_split), ("target_split", target_split)) if v]
    if val_fraction:
        chosen.append("val_fraction")
    if len(chosen) > 1:
        raise ValueError(f"give at most one of val_split, target_split, val_fraction; got {chosen}")
    path, splits = _open_splits(path, train_split, "load_hf_dataset")
    tokenizer = resolve_tokenizer(tokenizer)

    def split(name: str) -> Any:
        if name not in splits:
            raise DataError(f"{path}: no split {name!r}; splits: {sorted(splits)}")
        return splits[name]

    cache = None  # the val_fraction split draws whole documents: keep them as text
    if not val_fraction:
        cache = make_cache(cache_dir, tokenizer, text_field=text_field, vocab_size=vocab_size)
    content = content_hash(path) if cache is not None else ""

    def parts(name: str, field: str | None) -> dict[str, list[Part]]:
        where = f"{path} [{name}]"
        read = functools.partial(_documents, split(name), where, field, text_field)
        what = {"split": name, "domain_field": field}
        docs = read() if cache is None else _cached_split(cache, content, what, read)
        return {d: [(f"{where} domain {d!r}", data)] for d, data in docs.items()}

    train = parts(train_split, domain_field)
    val: dict[str, list[Part]] = {}
    if val_split:
        val = parts(val_split, domain_field)
        if set(val) != set(train):
            raise DataError(
                f"{path} [{val_split}]: validation domains {sorted(val)} differ from training "
                f"domains {sorted(train)}; use target_split for a separate target set"
            )
    elif target_split:
        has_field = domain_field in split(target_split).column_names
        val = parts(target_split, domain_field if has_field else None)
    elif val_fraction:
        pairs = {d: split_parts(d, p, val_fraction, seed) for d, p in train.items()}
        train = {d: tr for d, (tr, _) in pairs.items()}
        val = {d: va for d, (_, va) in pairs.items()}
    if cache is not None:
        tokenizer = cache.tokenizer  # cached text is arrays now: keep the tokenizer's vocabulary
    return build_corpus(train, val, tokenizer=tokenizer, vocab_size=vocab_size)


def _cached_split(
    cache: TokenCache, content: str, what: dict, read: Callable[[], dict]
) -> dict[str, np.ndarray]:
    """Domain -> tokens ``(n,)`` of one split: from ``cache``, else ``read()`` and stored.

    Args:
        cache: the token cache (its tokenizer and options are part of every key).
        content: ``content_hash`` of the dataset folder.
        what: the split and the domain field (the rest of the key).
        read: gives domain -> documents on a miss.
    """
    key = entry_key(content, cache.tokenizer_id, {**cache.options(), "kind": "hf-split", **what})
    hits = _lookup_split(cache, key)
    if hits is not None:
        return hits
    docs = read()
    tokens = {
        d: tokenize_documents(texts, cache.tokenizer, cache.dtype) for d, texts in docs.items()
    }
    for d, k in _domain_keys(key, tokens).items():
        cache.store(k, tokens[d], {"domain": d, **what})
    # the list of domains is written last: it makes the entries visible together
    cache.store(key, np.zeros(0, dtype=cache.dtype), {"domains": list(tokens), **what})
    return _lookup_split(cache, key) or tokens  # serve the mapped copies


def _domain_keys(key: str, names: Any) -> dict[str, str]:
    """Entry name of each domain of the split entry ``key``."""
    return {d: entry_key(key, "", {"domain": d}) for d in names}


def _lookup_split(cache: TokenCache, key: str) -> dict[str, np.ndarray] | None:
    """Domain -> memory-mapped tokens ``(n,)`` of a whole split entry, or None."""
    try:
        names = json.loads(cache.paths(key)[1].read_text(encoding="utf-8"))["domains"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no entry, or a damaged one: tokenize again and overwrite it
    hits = {d: cache.lookup(k) for d, k in _domain_keys(key, names).items()}
    return hits if all(v is not None for v in hits.values()) else None


def _texts(ds: Any, text_field: str, where: str) -> Iterator[str]:
    """The non-empty documents of an ``IterableDataset``'s rows, in order."""
    for row in ds:
        text = row.get(text_field)
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where}: {text_field!r} is {type(text).__name__}")
        if text:
            yield text


def row_opener(make: Callable[[], Any], text_field: str, where: str, skip: int = 0) -> OpenRows:
    """``open_rows`` of a ``StreamedDomain`` over fresh ``IterableDataset``s from ``make()``.

    A new dataset per call: an epoch restarts at the start, a position comes from the
    dataset's own ``state_dict`` (taken after each document). From the start, the first
    ``skip`` documents (held out for validation) are passed over.
    """

    def open_rows(position: Any) -> Iterator[tuple[str, Any]]:
        ds = make()
        if position is not None:
            ds.load_state_dict(copy.deepcopy(position))
        for i, text in enumerate(_texts(ds, text_field, where)):
            if position is not None or i >= skip:
                yield text, ds.state_dict()

    return open_rows


def first_tokens(open_rows: OpenRows, tokenizer: Any, n: int, dtype: Any) -> tuple[np.ndarray, int]:
    """``(tokens (<= n,), documents)``: the first ``n`` tokens and how many documents they span."""
    pieces, held = [], 0
    for text, _ in open_rows(None):
        pieces.append(tokenize_documents([text], tokenizer, dtype))
        held += pieces[-1].shape[0]
        if held >= n:
            break
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    return tokens[:n], len(pieces)


def _domain_counts(ds: Any, field: str, where: str) -> dict[str, int]:
    """Domain name -> row count, sorted by name (only the domain column is read)."""
    import pyarrow.compute as pc

    if field not in ds.column_names:
        raise DataError(f"{where}: no column {field!r}; columns: {ds.column_names}")
    counts: dict[str, int] = {}
    for item in pc.value_counts(ds.data.column(field)).to_pylist():
        name = str(item["values"])
        counts[name] = counts.get(name, 0) + int(item["counts"])
    if not counts:
        raise DataError(f"{where}: the dataset has no rows")
    return {name: counts[name] for name in sorted(counts)}


def _domain_rows(ds: Any, field: str, text_field: str, name: str) -> Callable[[], Any]:
    """``make()`` of one domain: the split's rows with ``field == name``, as an IterableDataset."""
    columns = ds.select_columns([field, text_field])
    return lambda: columns.to_iterable_dataset().filter(
        lambda value: str(value) == name, input_columns=[field]
    )


def stream_hf_dataset(
    path: str | Path,
    *,
    domain_field: str,
    text_field: str = "text",
    tokenizer: Any = None,
    train_split: str = "train",
    val_split: str | None = None,
    val_tokens: int = 0,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    vocab_size: int | None = None,
) -> DomainCorpus:
    """A local ``save_to_disk`` dataset streamed: one ``StreamedDomain`` per domain.

    No domain is tokenized whole: each holds at most ``buffer_tokens`` tokens, refilled as
    rows are drawn (``data.streamed``). The domains and their row counts come from the domain
    column alone; ``StreamedDomain.domain_tokens`` (what ``TokenSampler.domain_sizes`` gives
    for natural mixtures) is that row count times the mean tokens per document of the first
    buffer. A Hub dataset streamed over the network is read the same way (not done here:
    only local data is read).

    Args:
        path: the local dataset directory (a ``Dataset`` or a ``DatasetDict``).
        domain_field: column with the domain of each row (values become names via ``str``).
        text_field: column with the document text.
        tokenizer: None (``ByteTokenizer``), a ``tokenizer.json`` path, or a tokenizer object.
        train_split: split used for training when ``path`` holds a ``DatasetDict``.
        val_split: split with the same domains: each one's first ``val_tokens`` tokens are
            its validation set. Without it, each training domain's first documents holding
            ``val_tokens`` tokens are held out (training never reads them).
        val_tokens: validation tokens per domain (fixed windows); 0: no validation data.
        buffer_tokens: tokens held per training domain (``data.stream_buffer_tokens``).
        vocab_size: explicit vocabulary size (default: the tokenizer's).

    Returns:
        The ``DomainCorpus``: ``train`` holds ``StreamedDomain``s, ``val`` arrays.

    Raises:
        ImportError: ``datasets`` is not installed.
        DataError: missing directory, split or column; non-string text; empty domain.
        ValueError: ``val_split`` without ``val_tokens``; ``buffer_tokens < 2``.
    """
    if val_split and val_tokens < 2:
        raise ValueError(f"val_split needs val_tokens >= 2, got {val_tokens}")
    path, splits = _open_splits(path, train_split, "stream_hf_dataset")
    tokenizer = resolve_tokenizer(tokenizer) or ByteTokenizer()
    for name in filter(None, (train_split, val_split)):
        if name not in splits:
            raise DataError(f"{path}: no split {name!r}; splits: {sorted(splits)}")
    vocab = int(vocab_size if vocab_size is not None else tokenizer.vocab_size)
    dtype = token_dtype(vocab)

    def opener(split: str, name: str, skip: int = 0) -> OpenRows:
        ds, where = splits[split], f"{path} [{split}] domain {name!r}"
        if text_field not in ds.column_names:
            raise DataError(
                f"{path} [{split}]: no column {text_field!r}; columns: {ds.column_names}"
            )
        return row_opener(_domain_rows(ds, domain_field, text_field, name), text_field, where, skip)

    counts = _domain_counts(splits[train_split], domain_field, f"{path} [{train_split}]")
    val: dict[str, np.ndarray] = {}
    held_out = dict.fromkeys(counts, 0)
    if val_split:
        val_names = _domain_counts(splits[val_split], domain_field, f"{path} [{val_split}]")
        if set(val_names) != set(counts):
            raise DataError(
                f"{path} [{val_split}]: validation domains {sorted(val_names)} differ from "
                f"training domains {sorted(counts)}"
            )
        val = {
            d: first_tokens(opener(val_split, d), tokenizer, val_tokens, dtype)[0] for d in counts
        }
    elif val_tokens:
        for d in counts:
            val[d], held_out[d] = first_tokens(opener(train_split, d), tokenizer, val_tokens, dtype)
    train = [
        StreamedDomain(
            opener(train_split, d, skip=held_out[d]),
            tokenizer,
            capacity=buffer_tokens,
            dtype=dtype,
            documents=max(1, n - held_out[d]),
            where=f"{path} [{train_split}] domain {d!r}",
        )
        for d, n in counts.items()
    ]
    return DomainCorpus(
        domains=tuple(counts),
        train=tuple(train),
        val_domains=tuple(val),
        val=tuple(val.values()),
        vocab_size=vocab,
    )


class DocumentStream:
    """One domain's documents read lazily from a ``datasets.IterableDataset``, resumable.

    ``state_dict()`` is the position after the last document returned (the dataset's own
    ``state_dict``); a new stream over the same data given it by ``load_state_dict`` goes on
    with the next document, so a restarted job neither repeats nor skips text.

    Args:
        dataset: the ``IterableDataset`` (e.g. ``load_dataset(..., streaming=True)``).
        text_field: the column holding the document.
        where: what error messages name.
    """

    def __init__(self, dataset: Any, *, text_field: str = "text", where: str = "stream") -> None:
        self.dataset = dataset
        self.text_field = text_field
        self.where = where
        self._rows: Any = None  # the live iterator; its position is the dataset's state

    def documents(self, n: int) -> list[str]:
        """The next ``n`` non-empty documents (fewer at the end of the data)."""
        if self._rows is None:
            self._rows = iter(self.dataset)
        docs: list[str] = []
        for row in self._rows:
            if self.text_field not in row:
                raise DataError(f"{self.where}: no field {self.text_field!r}; fields: {list(row)}")
            text = row[self.text_field]
            if text is not None and not isinstance(text, str):
                raise DataError(f"{self.where}: {self.text_field!r} is {type(text).__name__}")
            if text:
                docs.append(text)
            if len(docs) == n:
                break
        return docs

    def tokens(self, tokenizer: Any, n_docs: int, dtype: Any = np.uint16) -> np.ndarray:
        """The next ``n_docs`` documents tokenized and joined with EOS: ``(n,)`` of ``dtype``."""
        return tokenize_documents(self.documents(n_docs), tokenizer, dtype)

    def state_dict(self) -> dict:
        """The position after the last document returned (a deep copy: JSON-serialisable)."""
        return copy.deepcopy(self.dataset.state_dict())

    def load_state_dict(self, state: dict) -> None:
        """Go on from ``state`` (from ``state_dict`` of a stream over the same data)."""
        self.dataset.load_state_dict(copy.deepcopy(state))
        self._rows = None  # the next iteration starts at the loaded position


def stream_documents(source: Any, *, text_field: str = "text") -> DocumentStream:
    """A resumable ``DocumentStream`` over a local text source or an ``IterableDataset``.

    Args:
        source: an ``IterableDataset``; a ``Dataset`` (streamed with ``to_iterable_dataset``);
            or a local path: a file with a ``data.text`` suffix (read with
            ``load_dataset(..., streaming=True)``) or a ``save_to_disk`` folder.
        text_field: the column holding the document (``.txt``: ignored, lines are documents).

    Raises:
        ImportError: ``datasets`` is not installed.
        DataError: a path that is no text source.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("stream_documents needs `datasets`: pip install datasets") from err
    if isinstance(source, datasets.IterableDataset):
        return DocumentStream(source, text_field=text_field)
    if isinstance(source, datasets.Dataset):
        return DocumentStream(source.to_iterable_dataset(), text_field=text_field)
    path = Path(source)
    kind = text_kind(path)
    if kind == "hf":
        ds = datasets.load_from_disk(str(path)).to_iterable_dataset()
    elif kind is not None:
        ds = datasets.load_dataset(
            _BUILDERS[kind], data_files=str(path), split="train", streaming=True
        )
        text_field = "text" if kind == ".txt" else text_field
    else:
        raise DataError(f"{path}: not a text source to stream (a file or a saved dataset)")
    return DocumentStream(ds, text_field=text_field, where=str(path))
