"""``load_folder``: a folder with one sub-folder or one file per domain -> ``DomainCorpus``."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import sft
from .cache import make_cache, read_part
from .corpus import DataError, DomainCorpus
from .formats import is_data_file, read_file
from .shards import ShardedStream
from .streams import Part, build_corpus
from .text import domain_stem, is_hf_dataset_dir, text_kind
from .tokenizer import load_tokenizer

__all__ = ["load_folder", "resolve_tokenizer", "split_parts"]


def resolve_tokenizer(tokenizer: Any) -> Any:
    """None stays None (byte default), a path is loaded with ``load_tokenizer``, else as is."""
    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer


def _scan(root: Path, what: str, reader: Any = read_file, **read: Any) -> dict[str, list[Part]]:
    """Domain name -> parts, sorted by name: a sub-folder (all its files) or a file (its stem).

    ``reader(file, **read)`` reads one file (``read_file``; ``sft.read_records`` for SFT data).
    """
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
        name = entry.name if entry.is_dir() else domain_stem(entry)
        if name in domains:
            raise DataError(f"{root}: more than one file or folder for domain {name!r}")
        files = [entry]
        if entry.is_dir() and not is_hf_dataset_dir(entry):  # its data files, in path order
            files = sorted(
                f
                for f in entry.rglob("*")
                if f.is_file() and all(is_data_file(Path(p)) for p in f.relative_to(entry).parts)
            )
            if not files:
                raise DataError(f"{entry}: domain {name!r} is empty (no data files)")
        domains[name] = [(str(f), reader(f, **read)) for f in files]
    return domains


def split_parts(name: str, parts: list[Part], fraction: float, seed: int) -> tuple[list, list]:
    """Split one domain's parts into (train, val) parts, deterministically.

    Documents (text parts, pooled) go to validation by a seeded random choice of
    ``round(fraction * n)`` of them (at least 1), keeping their order; each pre-tokenized
    array gives the tail ``round(fraction * n)`` tokens (a view: memmaps stay memmaps, a
    ``ShardedStream`` gives two views of its shards; nothing is read).
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
        if isinstance(data, (np.ndarray, ShardedStream)):
            n = data.shape[0]
            cut = n - max(2, round(fraction * n))
            if cut < 2:
                raise DataError(f"{where}: too few tokens ({n}) for val_fraction")
            if isinstance(data, ShardedStream):
                train.append((where, data.view(0, cut)))
                val.append((where, data.view(cut, n)))
            else:
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
    raw_dtype: str = "",
    windows: str = "span",
    format: str = "text",
    sft_layout: str = "pack",
    seq_len: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
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
        raw_dtype: dtype of headerless ``.npy`` files (dolma / OLMo); ``""``: an error.
        windows: ``"span"`` or ``"documents"`` (rows stop at document boundaries).
        format: ``"text"`` (documents, token files) or ``"sft"``: ``.jsonl`` instruction
            records, one ``SFTStream`` per domain (``data.sft``), validation/target sets too.
        sft_layout: (sft) ``"pack"`` or ``"pad"``.
        seq_len: (sft) T, so a ``"pad"`` prompt that leaves no response label fails here.
        cache_dir: (text) tokenize each text source once into this cache and memory-map it
            on later loads (``data.cache_dir``; ``"auto"``: ``$TANDEM_CACHE`` or
            ``~/.cache/tandem/tokens``); None / ``""`` / ``"none"``: no cache. Not used with
            ``val_fraction``, whose split draws whole documents.
        progress: show a bar while tokenizing into the cache (on a terminal only).

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
    if format == "sft" and isinstance(tokenizer, (str, Path)):  # may carry a chat template
        tokenizer = sft.load_sft_tokenizer(tokenizer)
    tokenizer = resolve_tokenizer(tokenizer)
    read: dict[str, Any] = {"text_field": text_field, "bin_dtype": bin_dtype}
    read["raw_dtype"] = raw_dtype
    if format == "sft":  # instruction records: (file:line, object) lists, split like documents
        read = {"reader": sft.read_records}
    elif format != "text":
        raise ValueError(f"format must be 'text' or 'sft', got {format!r}")
    cache = None
    if format == "text" and not val_fraction:  # the split draws documents: keep them as text
        cache = make_cache(
            cache_dir, tokenizer, text_field=text_field, vocab_size=vocab_size, progress=progress
        )
    if cache is not None:
        read = {**read, "reader": read_part, "cache": cache}
    one = read.get("reader", read_file)
    args = {k: v for k, v in read.items() if k != "reader"}
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
            val = {domain_stem(target): [(str(target), one(target, **args))]}
        else:
            val = _scan(target, "target", **read)
    elif val_fraction:
        split = {
            name: split_parts(name, parts, val_fraction, seed) for name, parts in train.items()
        }
        train = {name: tr for name, (tr, _) in split.items()}
        val = {name: va for name, (_, va) in split.items()}
    if format == "sft":
        layout = {"layout": sft_layout, "seq_len": seq_len, "vocab_size": vocab_size}
        return sft.build_sft_corpus(train, val, tokenizer=tokenizer, **layout)
    sources = [w for d in (train, val) for parts in d.values() for w, _ in parts]
    if cache is not None and any(text_kind(Path(w)) for w in sources):
        tokenizer = cache.tokenizer  # cached text is arrays now: keep the tokenizer's vocabulary
    return build_corpus(train, val, tokenizer=tokenizer, vocab_size=vocab_size, windows=windows)
