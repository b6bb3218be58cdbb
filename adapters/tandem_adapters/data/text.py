"""Text sources: documents of ``.txt``, ``.jsonl[.gz|.zst]``, ``.parquet`` and saved datasets.

Rules (see also ``formats``):

- ``.txt``: UTF-8, one document per line; blank (whitespace-only) lines are skipped.
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one JSON object per line with the document in
  ``text_field``; blank lines and empty documents are skipped. Errors name ``file:line``.
  ``.gz`` is read with the stdlib, ``.zst`` with the ``zstandard`` package.
- ``.parquet``: the string column ``text_field``, read in record batches with ``pyarrow``.
- a Hugging Face dataset saved with ``save_to_disk`` (a folder holding ``state.json`` and
  ``dataset_info.json``): its ``text_field`` column, read with ``datasets.load_from_disk``.

Documents are produced lazily (``iter_documents``), so a large file is never held as one
``list[str]`` by the tokenization cache.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .corpus import DataError

__all__ = [
    "TEXT_SUFFIXES",
    "decode_lines",
    "domain_stem",
    "is_hf_dataset_dir",
    "json_record",
    "iter_documents",
    "read_documents",
    "text_kind",
]

# Longest first: "a.jsonl.gz" must match ".jsonl.gz", never ".gz" alone.
TEXT_SUFFIXES = (".jsonl.gz", ".jsonl.zst", ".parquet", ".jsonl", ".txt")
HF_MARKERS = ("state.json", "dataset_info.json")  # what save_to_disk writes next to the shards
_BATCH_ROWS = 4096  # parquet / datasets rows per batch: bounded memory on big files


def is_hf_dataset_dir(path: Path) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` (not for a ``DatasetDict``)."""
    return path.is_dir() and all((path / m).is_file() for m in HF_MARKERS)


def text_kind(path: Path) -> str | None:
    """The text format of ``path``: one of ``TEXT_SUFFIXES``, ``"hf"``, or None (not text)."""
    if is_hf_dataset_dir(path):
        return "hf"
    return next((s for s in TEXT_SUFFIXES if path.name.endswith(s)), None)


def domain_stem(path: Path) -> str:
    """A file's domain name: its name less its whole data suffix (``a.jsonl.gz`` -> ``a``)."""
    kind = text_kind(path)
    return path.name[: -len(kind)] if kind not in (None, "hf") else path.stem


def _open_binary(path: Path, kind: str) -> IO[bytes]:
    if kind == ".jsonl.gz":
        return gzip.open(path, "rb")
    if kind == ".jsonl.zst":
        try:
            import zstandard
        except ImportError as err:
            raise ImportError(
                f"{path}: reading .zst needs `zstandard`: pip install 'tandem-mixture[data]'"
            ) from err
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def _lines(path: Path, kind: str) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of each line (1-based, newline stripped), decoded strictly."""
    import io

    with _open_binary(path, kind) as raw:
        # zstandard's reader has no line iteration of its own; BufferedReader adds it
        f = raw if kind != ".jsonl.zst" else io.BufferedReader(raw)
        try:
            yield from decode_lines(path, f)
        except (OSError, EOFError) as err:  # truncated or corrupt .gz / .zst
            raise DataError(f"{path}: cannot decompress ({err})") from None


def decode_lines(path: Path, lines: Any) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of binary ``lines`` (1-based, newline stripped), strict UTF-8.

    Raises:
        DataError: ``path:line`` of the first line that is not valid UTF-8.
    """
    for lineno, line in enumerate(lines, start=1):
        try:
            yield lineno, line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{path}:{lineno}: not valid UTF-8 (byte {err.start} of the line)"
            ) from None


def json_record(path: Path, lineno: int, line: str) -> dict:
    """One JSONL line as a dict; ``DataError`` naming ``file:line`` when it is not an object."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _jsonl_document(path: Path, lineno: int, line: str, text_field: str) -> str:
    record = json_record(path, lineno, line)
    if text_field not in record:
        keys = sorted(record)[:10]
        raise DataError(f"{path}:{lineno}: missing text field {text_field!r} (keys: {keys})")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}"
        )
    return text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError on a bad file
        raise DataError(f"{path}: not a readable .parquet file ({err})") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column {text_field!r}; columns: {names}")
    row = 0
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path} row {row}: {text_field!r} is {type(text).__name__}")
            row += 1
            if text:
                yield text


def _hf_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"{path}: reading a saved dataset needs `datasets`") from err
    ds = datasets.load_from_disk(str(path))
    if text_field not in ds.column_names:
        raise DataError(f"{path}: no column {text_field!r}; columns: {ds.column_names}")
    row = 0
    for batch in ds.select_columns([text_field]).iter(batch_size=_BATCH_ROWS):
        for text in batch[text_field]:
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path} row {row}: {text_field!r} is {type(text).__name__}")
            row += 1
            if text:
                yield text


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The non-empty documents of one text source, in file order, read lazily.

    Args:
        path: a file with one of ``TEXT_SUFFIXES``, or a ``save_to_disk`` dataset folder.
        text_field: the JSON key / column holding the document (not used for ``.txt``).

    Yields:
        Each document (``str``).

    Raises:
        DataError: malformed content (``file:line`` for text lines), missing column, not text.
    """
    path = Path(path)
    kind = text_kind(path)
    if kind is None:
        raise DataError(f"{path}: not a text source; supported: {TEXT_SUFFIXES} or a dataset dir")
    if kind == ".parquet":
        yield from _parquet_documents(path, text_field)
    elif kind == "hf":
        yield from _hf_documents(path, text_field)
    elif kind == ".txt":
        yield from (line for _, line in _lines(path, kind) if line.strip())
    else:
        for lineno, line in _lines(path, kind):
            if line.strip():
                text = _jsonl_document(path, lineno, line, text_field)
                if text:
                    yield text


def read_documents(path: Path, text_field: str = "text") -> list[str]:
    """``list(iter_documents(path, text_field))``: every document of a text source."""
    return list(iter_documents(path, text_field))


def source_files(path: Path) -> list[Path]:
    """The files whose content makes up a source: itself, or every file of a dataset folder."""
    path = Path(path)
    return sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]


def batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last one shorter) of an iterator."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
