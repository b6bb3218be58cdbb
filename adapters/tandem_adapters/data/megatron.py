r"""Read a Megatron-LM indexed dataset (``X.bin`` + ``X.idx``) without loading it.

The ``.idx`` layout (Megatron's ``MMapIndexedDataset`` / ``IndexedDataset``), little-endian:

=========================  ===========================================================
``MMIDIDX\x00\x00``        9-byte magic
version                    uint64, 1
dtype code                 uint8: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                           7 float32, 8 uint16 (``DTYPE_CODES``)
sequence count N           uint64
document count D           uint64 (number of documents + 1)
sequence lengths           int32 ``(N,)``, in tokens
sequence pointers          int64 ``(N,)``, byte offsets into ``X.bin``
document indices           int64 ``(D,)``, sequence index where each document starts; the
                           first is 0 and the last is N
(sequence modes)           int8 ``(N,)``, only in multimodal datasets; ignored
=========================  ===========================================================

``X.bin`` is the sequences' tokens back to back. Only the header and a few entries are read at
load; the document starts (for ``data.windows = "documents"``) are read on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .corpus import DataError

__all__ = ["DTYPE_CODES", "MAGIC", "read_megatron", "write_megatron"]

MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}


def _header(idx: Path) -> tuple[np.dtype, int, int]:
    """``(dtype, N, D)`` from the first ``HEADER_BYTES`` of ``idx``, checked."""
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise DataError(f"{idx}: truncated Megatron index ({len(head)} bytes, header needs 34)")
    if head[: len(MAGIC)] != MAGIC:
        raise DataError(f"{idx}: not a Megatron index (bad magic {head[: len(MAGIC)]!r})")
    version, code, n, d = np.frombuffer(head, np.dtype("<u8,u1,<u8,<u8"), offset=len(MAGIC))[0]
    if version != 1:
        raise DataError(f"{idx}: Megatron index version {version}, only version 1 is read")
    if int(code) not in DTYPE_CODES:
        raise DataError(f"{idx}: unknown Megatron dtype code {code} (known: {list(DTYPE_CODES)})")
    dtype = np.dtype(DTYPE_CODES[int(code)])
    if not np.issubdtype(dtype, np.integer):
        raise DataError(f"{idx}: Megatron dtype {dtype} does not hold token ids")
    return dtype, int(n), int(d)


def read_megatron(bin_path: Path, idx_path: Path) -> tuple[np.ndarray, Callable[[], np.ndarray]]:
    """The memory-mapped tokens of ``X.bin`` and a lazy reader of its document starts.

    Returns:
        ``(tokens, documents)``: tokens ``(n,)`` memmap of the index's dtype; ``documents()``
        gives int64 ``(D - 1,)`` token offsets of the document starts (sorted, checked).

    Raises:
        DataError: bad magic, unknown version or dtype code, an ``.idx`` whose size does not
            match its counts, a ``.bin`` whose size does not match the index (names both).
    """
    dtype, n, d = _header(idx_path)
    size = idx_path.stat().st_size
    expected = HEADER_BYTES + 12 * n + 8 * d
    if size not in (expected, expected + n):  # + n: the multimodal sequence modes
        raise DataError(
            f"{idx_path}: {size} bytes, but {n} sequences and {d} document indices need "
            f"{expected} (truncated or mismatched index)"
        )
    lengths = np.memmap(idx_path, np.int32, "r", HEADER_BYTES, (n,)) if n else np.zeros(0)
    pointers = np.memmap(idx_path, np.int64, "r", HEADER_BYTES + 4 * n, (n,)) if n else lengths
    docs = np.memmap(idx_path, np.int64, "r", HEADER_BYTES + 12 * n, (d,)) if d else np.zeros(0)
    bin_size = bin_path.stat().st_size
    end = int(pointers[-1]) + int(lengths[-1]) * dtype.itemsize if n else 0
    if end != bin_size:
        raise DataError(
            f"{bin_path}: {bin_size} bytes, but {idx_path} says its last sequence ends at byte "
            f"{end} (the .bin and .idx do not belong together)"
        )
    if d < 1 or int(docs[0]) != 0 or int(docs[-1]) != n:
        raise DataError(f"{idx_path}: document indices must run from 0 to {n} (the sequences)")
    tokens = np.memmap(bin_path, dtype, "r") if bin_size else np.zeros(0, dtype)

    def documents() -> np.ndarray:
        first = np.asarray(docs[:-1], dtype=np.int64)
        if np.any(np.diff(first) < 0) or (first.size and first.max() > max(n - 1, 0)):
            bad = (
                int(np.flatnonzero(np.diff(first) < 0)[0] + 1) if np.any(np.diff(first) < 0) else 0
            )
            raise DataError(f"{idx_path}: document index record {bad} is out of order or range")
        starts = np.asarray(pointers, dtype=np.int64)[first[first < n]] // dtype.itemsize
        if np.any(np.diff(starts) < 0):
            bad = int(np.flatnonzero(np.diff(starts) < 0)[0] + 1)
            raise DataError(f"{idx_path}: sequence pointer of document {bad} goes backwards")
        return starts

    return tokens, documents


def write_megatron(prefix: Path, documents: list[np.ndarray], dtype: str = "uint16") -> None:
    """Write ``prefix.bin`` + ``prefix.idx`` (one sequence per document), Megatron's layout.

    Args:
        prefix: path without suffix.
        documents: 1-D integer arrays, one per document.
        dtype: one of the ``DTYPE_CODES`` dtypes.
    """
    code = {np.dtype(v): k for k, v in DTYPE_CODES.items()}[np.dtype(dtype)]
    arrays = [np.asarray(doc, dtype=dtype) for doc in documents]
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    pointers = (
        np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]) * np.dtype(dtype).itemsize
    )
    with open(f"{prefix}.bin", "wb") as f:
        for a in arrays:
            f.write(a.tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(MAGIC)
        f.write(np.array([1], "<u8").tobytes() + np.array([code], "u1").tobytes())
        f.write(np.array([len(arrays), len(arrays) + 1], "<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes() + pointers.astype("<i8").tobytes())
        f.write(np.arange(len(arrays) + 1, dtype="<i8").tobytes())
