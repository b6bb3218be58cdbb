"""``load_folder``: a folder with one sub-folder or one file per domain -> ``DomainCorpus``."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import DataError, DomainCorpus
from .formats import is_data_file, read_file
from .streams import Part, build_corpus
from .tokenizer import load_tokenizer

__all__ = ["load_folder", "resolve_tokenizer", "split_parts"]


def resolve_tokenizer(tokenizer: Any) -> Any:
    """None stays None (byte default), a path is loaded with ``load_tokenizer``, else as is."""
    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer


def _scan(root: Path, what: str, **read: Any) -> dict[str, list[Part]]:
    """Domain name -> parts, sorted by name: a sub-folder (all its files) or a file (its stem)."""
    if root.is_file():
        raise DataError(
            f"{root}: is a file; the {what} data must be a folder with one file or sub-folder "
            "per domain"
        )
    if not root.is_dir():
        raise DataError(f"{root}: {what} folder not found")
    entries = sorted(p for p in root.iterdir() if is_data_file(p))
    if not entries:
        raise DataError(f"{root}: empty {what} folder (no domain files or sub-folders)")
    domains: dict[str, list[Part]] = {}
    for entry in entries:
        name = entry.name if entry.is_dir() else entry.stem
        if name in domains:
            raise DataError(f"{root}: more than one file or folder for domain {name!r}")
        files = [entry]
        if entry.is_dir():  # every data file below it, in sorted path order
            files = sorted(
                f
                for f in entry.rglob("*")
                if f.is_file() and all(is_data_file(Path(p)) for p in f.relative_to(entry).parts)
            )
            if not files:
                raise DataError(f"{entry}: domain {name!r} is empty (no data files)")
        domains[name] = [(str(f), read_file(f, **read)) for f in files]
    return domains


def split_parts(name: str, parts: list[Part], fraction: float, seed: int) -> tuple[list, list]:
    """Split one domain's parts into (train, val) parts, deterministically.

    Documents (text parts, pooled) go to validation by a seeded random choice of
    ``round(fraction * n)`` of them (at least 1), keeping their order; each pre-tokenized
    array gives the tail ``round(fraction * n)`` tokens (a view: memmaps stay memmaps).
    The seed mixes in the domain name, so adding a domain never changes another's split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    docs = [d for _, data in parts if isinstance(data, list) for d in data if d]  # non-empty
    train: list[Part] = []
    val: list[Part] = []
    if docs:
        n_val = max(1, round(fraction * len(docs)))
        if n_val >= len(docs):
            raise DataError(
                f"domain {name!r}: val_fraction={fraction} leaves no training documents "
                f"({len(docs)} documents)"
            )
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
        is_val = np.zeros(len(docs), dtype=bool)
        is_val[rng.choice(len(docs), size=n_val, replace=False)] = True
        where = f"domain {name!r}"
        train.append((where, [d for d, v in zip(docs, is_val) if not v]))
        val.append((where, [d for d, v in zip(docs, is_val) if v]))
    for where, data in parts:
        if isinstance(data, np.ndarray):
            cut = data.shape[0] - max(2, round(fraction * data.shape[0]))
            if cut < 2:
                raise DataError(f"{where}: too few tokens ({data.shape[0]}) for val_fraction")
            train.append((where, data[:cut]))
            val.append((where, data[cut:]))
    return train, val


def load_folder(
    path: str | Path,
    *,
    tokenizer: Any = None,
    text_field: str = "text",
    val_path: str | Path | None = None,
    val_fraction: float = 0.0,
    target_path: str | Path | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    bin_dtype: str = "uint16",
) -> DomainCorpus:
    """Read a folder with one sub-folder or one file per domain (see ``formats`` for the files).

    Layout: each entry of ``path`` is a domain, sorted by name: a file (domain = its stem) or
    a sub-folder (domain = its name; all data files below it, in sorted path order). Hidden
    files and ``.bin.dtype`` sidecars are skipped. Text documents are tokenized and joined,
    each followed by EOS; pre-tokenized files are used as is (one per domain stays mapped).

    Args:
        path: the training folder.
        tokenizer: None (``ByteTokenizer``), a ``tokenizer.json`` path, or a tokenizer object.
        text_field: the ``.jsonl`` key holding the document.
        val_path: a folder with the same domain names -> per-domain validation.
        val_fraction: in ``(0, 1)``: hold out this share of each domain (``split_parts``).
        target_path: a file (one target domain, named by its stem) or a folder (one target
            domain per entry, same layout) -> a separate target validation set.
        seed: seed of the ``val_fraction`` split.
        vocab_size: explicit vocabulary size (see ``build_corpus`` for the default).
        bin_dtype: dtype of ``.bin`` files without a sidecar: one of ``BIN_DTYPES``.

    Returns:
        The ``DomainCorpus``; no validation data when none of the three options is given.

    Raises:
        DataError: missing or empty folder, empty domain, malformed file (``file:line``),
            unknown extension, token id out of range, train/val domain mismatch.
        ValueError: more than one validation option, or ``val_fraction`` outside ``[0, 1)``.
    """
    chosen = [n for n, v in (("val_path", val_path), ("target_path", target_path)) if v]
    if val_fraction:
        chosen.append("val_fraction")
    if len(chosen) > 1:
        raise ValueError(f"give at most one of val_path, val_fraction, target_path; got {chosen}")
    if val_fraction and not 0.0 < val_fraction < 1.0:  # fail before reading anything
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tokenizer = resolve_tokenizer(tokenizer)
    read = {"text_field": text_field, "bin_dtype": bin_dtype}
    train = _scan(Path(path), "training", **read)
    val: dict[str, list[Part]] = {}
    if val_path:
        val = _scan(Path(val_path), "validation", **read)
        if set(val) != set(train):
            raise DataError(
                f"{val_path}: validation domains differ from the training domains in {path}: "
                f"missing {sorted(set(train) - set(val))}, extra {sorted(set(val) - set(train))}"
            )
        val = {name: val[name] for name in train}
    elif target_path:
        target = Path(target_path)
        if not target.exists():
            raise DataError(f"{target}: target file or folder not found")
        if target.is_file():
            val = {target.stem: [(str(target), read_file(target, **read))]}
        else:
            val = _scan(target, "target", **read)
    elif val_fraction:
        split = {
            name: split_parts(name, parts, val_fraction, seed) for name, parts in train.items()
        }
        train = {name: tr for name, (tr, _) in split.items()}
        val = {name: va for name, (_, va) in split.items()}
    return build_corpus(train, val, tokenizer=tokenizer, vocab_size=vocab_size)
