"""Read one data file: text documents (``.txt``, ``.jsonl``) or token ids (``.npy``, ``.bin``).

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
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .corpus import DataError

__all__ = ["BIN_DTYPES", "SUFFIXES", "is_data_file", "read_file", "read_text_lines"]

TEXT_SUFFIXES = (".txt", ".jsonl")
TOKEN_SUFFIXES = (".npy", ".bin")
SUFFIXES = TEXT_SUFFIXES + TOKEN_SUFFIXES
SIDECAR_SUFFIX = ".dtype"
BIN_DTYPES = ("uint16", "uint32", "int32")
NPY_MAGIC = b"\x93NUMPY"


def is_data_file(path: Path) -> bool:
    """False for hidden files and ``.bin.dtype`` sidecars, which readers skip silently."""
    return not path.name.startswith(".") and path.suffix != SIDECAR_SUFFIX


def read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each line (1-based, newline stripped), decoded strictly.

    Raises:
        DataError: ``path:line`` of the first line that is not valid UTF-8.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {err.start} of the line)"
                ) from None


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            keys = sorted(record)[:10]
            raise DataError(f"{path}:{lineno}: missing text field {text_field!r} (keys: {keys})")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(
                f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}"
            )
        docs.append(text)
    return docs


def _bin_dtype(path: Path, default: str) -> np.dtype:
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    name = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else default
    if name not in BIN_DTYPES:
        where = sidecar if sidecar.is_file() else "bin_dtype"
        raise DataError(f"{where}: unsupported .bin dtype {name!r}; use one of {BIN_DTYPES}")
    return np.dtype(name)


def _read_tokens(path: Path, bin_dtype: str) -> np.ndarray:
    if path.suffix == ".npy":
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
        if magic != NPY_MAGIC:  # np.load would call anything else "pickled data"
            raise DataError(f"{path}: not a .npy file (no NumPy header; save it with np.save)")
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
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(f"{path}: {size} bytes is not a whole number of {dtype} tokens")
    if size == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_file(path: Path, *, text_field: str = "text", bin_dtype: str = "uint16"):
    """Documents (``list[str]``) of a text file, or the memory-mapped ids of a token file.

    Args:
        path: a ``.txt``, ``.jsonl``, ``.npy`` or ``.bin`` file (see the module docstring).
        text_field: the ``.jsonl`` key holding the document.
        bin_dtype: default dtype of ``.bin`` files without a sidecar.

    Returns:
        ``list[str]`` for text files; a 1-D integer ``np.ndarray`` (memmap) for token files.

    Raises:
        DataError: unknown extension, or malformed content (names ``file:line`` for text).
    """
    if path.suffix == ".txt":
        return [line for _, line in read_text_lines(path) if line.strip()]
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    if path.suffix in TOKEN_SUFFIXES:
        return _read_tokens(path, bin_dtype)
    raise DataError(f"{path}: unknown file extension {path.suffix!r}; supported: {SUFFIXES}")
