"""Read one data file: text documents (``.txt``, ``.jsonl``) or token ids (``.npy``, ``.bin``).

Compressed JSONL (``.jsonl.gz``, ``.jsonl.zst``), ``.parquet`` and ``save_to_disk`` dataset
folders are text sources too; ``data.text`` reads every text format.

Rules (the same in every layout):

- ``.txt``: UTF-8, one document per line; blank (whitespace-only) lines are skipped. Use
  ``.jsonl`` for documents that contain newlines.
- ``.jsonl``: one JSON object per line with the document in ``text_field``; blank lines and
  empty documents are skipped.
- ``.npy``: a 1-D integer array, memory-mapped (``np.load(mmap_mode="r")``).
- ``.bin``: raw token ids, memory-mapped (``np.memmap``), nanoGPT-style. The dtype is
  ``uint16`` unless a sidecar text file ``<name>.bin.dtype`` next to it holds one of
  ``BIN_DTYPES`` (e.g. ``uint32`` for vocabularies above 65536), or the reader is given
  another default ``bin_dtype``. The sidecar wins over the default.
- ``.bin`` with a sibling ``.idx``: a Megatron-LM indexed dataset (``data.megatron``); the
  ``.idx`` gives the dtype and the document boundaries. ``.idx`` files are not data files.
- ``.npy`` without the NumPy header: a headerless raw array as dolma / OLMo write them, read
  as ``raw_dtype`` (``data.raw_dtype``, one of ``BIN_DTYPES``); an error when it is ``""``.
  dolma's metadata ``X.csv.gz`` next to ``X.npy`` (rows ``start,end,id,...``) gives the
  document boundaries (``data.windows = "documents"``); ``.csv.gz`` files are not data files.

Token files are never read whole here: see ``data.shards`` for how ids are checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import DataError
from .megatron import read_megatron
from .shards import Shard, ShardedStream, dolma_documents
from .text import decode_lines, read_documents, text_kind

__all__ = ["BIN_DTYPES", "SUFFIXES", "is_data_file", "read_file", "read_text_lines"]

TEXT_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")  # see data.text
TOKEN_SUFFIXES = (".npy", ".bin")
SUFFIXES = TEXT_SUFFIXES + TOKEN_SUFFIXES
SIDECAR_SUFFIX = ".dtype"
BIN_DTYPES = ("uint16", "uint32", "int32")
NPY_MAGIC = b"\x93NUMPY"
IDX_SUFFIX = ".idx"  # Megatron's index, read with its .bin
DOLMA_META = ".csv.gz"  # dolma's document spans, read with its .npy


def is_data_file(path: Path) -> bool:
    """False for hidden files and sidecars (``.bin.dtype``, ``.idx``, dolma's ``.csv.gz``).

    Only the name is looked at (readers pass path parts); CSV is no data format here, so a
    ``.csv.gz`` is always taken for dolma's metadata.
    """
    sidecar = path.suffix in (SIDECAR_SUFFIX, IDX_SUFFIX) or path.name.endswith(DOLMA_META)
    return not (path.name.startswith(".") or sidecar)


def read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each line (1-based, newline stripped), decoded strictly.

    Raises:
        DataError: ``path:line`` of the first line that is not valid UTF-8.
    """
    with open(path, "rb") as f:
        yield from decode_lines(path, f)


def _bin_dtype(path: Path, default: str) -> np.dtype:
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    name = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else default
    if name not in BIN_DTYPES:
        where = sidecar if sidecar.is_file() else "bin_dtype"
        raise DataError(f"{where}: unsupported .bin dtype {name!r}; use one of {BIN_DTYPES}")
    return np.dtype(name)


def _raw_array(path: Path, name: str, what: str) -> np.ndarray:
    """A headerless file of ``name`` ids, memory-mapped ``(n,)``; checked dtype and size."""
    if name not in BIN_DTYPES:
        raise DataError(f"{what}: unsupported token dtype {name!r}; use one of {BIN_DTYPES}")
    dtype = np.dtype(name)
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} tokens")
    if size == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _read_tokens(path: Path, bin_dtype: str, raw_dtype: str = "") -> Any:
    idx = path.with_suffix(IDX_SUFFIX)
    if path.suffix == ".bin" and idx.is_file():  # Megatron, not nanoGPT
        tokens, documents = read_megatron(path, idx)
        return ShardedStream([Shard(str(path), tokens, documents=documents)])
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC and raw_dtype:  # dolma / OLMo: raw ids named .npy
            tokens = _raw_array(path, raw_dtype, "data.raw_dtype")
            meta = path.with_suffix(DOLMA_META)
            if not meta.is_file():
                return tokens
            documents = dolma_documents(meta, tokens.shape[0])  # read on first use only
            return ShardedStream([Shard(str(path), tokens, documents=documents)])
        if magic != NPY_MAGIC:  # np.load would call anything else "pickled data"
            raise DataError(
                f"{path}: not a .npy file (no NumPy header; save it with np.save, or set "
                "data.raw_dtype for headerless arrays)"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable .npy file ({err})") from None
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                f"{path}: expected a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}"
            )
        return arr
    dtype = _bin_dtype(path, bin_dtype)
    return _raw_array(path, dtype.name, "bin_dtype")


def read_file(
    path: Path, *, text_field: str = "text", bin_dtype: str = "uint16", raw_dtype: str = ""
):
    """Documents (``list[str]``) of a text file, or the memory-mapped ids of a token file.

    Args:
        path: a ``.txt``, ``.jsonl``, ``.npy`` or ``.bin`` file (see the module docstring).
        text_field: the ``.jsonl`` key holding the document.
        bin_dtype: default dtype of ``.bin`` files without a sidecar.
        raw_dtype: dtype of headerless ``.npy`` files (dolma); ``""``: such a file is an error.

    Returns:
        ``list[str]`` for text files; a 1-D integer ``np.ndarray`` (memmap) for token files,
        a one-shard ``ShardedStream`` (with document boundaries) for a Megatron ``.bin``.

    Raises:
        DataError: unknown extension, or malformed content (names ``file:line`` for text).
    """
    if text_kind(path) is not None:  # by full name: "a.jsonl.gz".suffix is only ".gz"
        return read_documents(path, text_field)
    if path.suffix in TOKEN_SUFFIXES:
        return _read_tokens(path, bin_dtype, raw_dtype)
    raise DataError(f"{path}: unknown file extension {path.suffix!r}; supported: {SUFFIXES}")
