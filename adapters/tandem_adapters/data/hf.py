"""``load_hf_dataset``: a Hugging Face ``datasets`` dataset saved on local disk -> ``DomainCorpus``.

``stream_documents``: one domain's documents from an ``IterableDataset``, resumable.

Optional: needs the ``datasets`` package. Only local data is read (``load_from_disk`` on a
``save_to_disk`` directory, or ``load_dataset(..., streaming=True)`` on local files); nothing
is downloaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import DataError, DomainCorpus
from .readers import resolve_tokenizer, split_parts
from .streams import Part, build_corpus, tokenize_documents
from .text import text_kind

__all__ = ["DocumentStream", "load_hf_dataset", "stream_documents"]

# `datasets` builders of the local files a stream can read (``data.text`` names the suffixes)
_BUILDERS = {
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".jsonl.zst": "json",
    ".parquet": "parquet",
    ".txt": "text",
}


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

    Returns:
        The ``DomainCorpus``; domains sorted by name.

    Raises:
        ImportError: ``datasets`` is not installed.
        DataError: missing directory, split or column; non-string text; empty domain.
        ValueError: more than one validation option.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("load_hf_dataset needs `datasets`: pip install datasets") from err
    chosen = [n for n, v in (("val_split", val_split), ("target_split", target_split)) if v]
    if val_fraction:
        chosen.append("val_fraction")
    if len(chosen) > 1:
        raise ValueError(f"give at most one of val_split, target_split, val_fraction; got {chosen}")
    tokenizer = resolve_tokenizer(tokenizer)
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: dataset directory not found (only local datasets are read)")
    data = datasets.load_from_disk(str(path))
    splits = data if isinstance(data, datasets.DatasetDict) else {train_split: data}

    def split(name: str) -> Any:
        if name not in splits:
            raise DataError(f"{path}: no split {name!r}; splits: {sorted(splits)}")
        return splits[name]

    def parts(name: str, field: str | None) -> dict[str, list[Part]]:
        docs = _documents(split(name), f"{path} [{name}]", field, text_field)
        return {d: [(f"{path} [{name}] domain {d!r}", texts)] for d, texts in docs.items()}

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
    return build_corpus(train, val, tokenizer=tokenizer, vocab_size=vocab_size)


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
