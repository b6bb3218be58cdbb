"""What a checkpoint was made from: the configuration and the data, and what changed since.

``--resume`` continues a run only on the same configuration and the same data. The data's
fingerprint is cheap, computed once at start and stored in every checkpoint's metadata:

- files (``data.path``, ``data.val_path``, ``data.target_path``, ``data.hf_dataset``,
  ``data.tokenizer``, ``train.adapt_anchor``): each file's name (relative to its root), size
  and a hash: of the whole file up to ``FULL_HASH_BYTES``, else of ``SAMPLE_BLOCKS`` blocks
  spread over it (first and last included), so a 100 GB ``.bin`` costs a few milliseconds;
- the corpus, whatever its source (files, a local Hugging Face dataset, a built-in suite): the
  token count of every training and validation stream and a hash of its tokens (all of them up
  to ``FULL_HASH_BYTES``, else sampled blocks), and the vocabulary size;
- built-in suites: their settings; ADAPT anchors: their token count and hash.

A streamed training domain (``data.hf_streaming``) holds only a buffer: its tokens are not
hashed (that would read the dataset), the dataset folder's files stand for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tandem_core import ConfigError

from .data import DataError, DomainCorpus
from .data.streamed import StreamedDomain

__all__ = [
    "DataChangedError",
    "check_resume",
    "config_changes",
    "data_changes",
    "data_fingerprint",
    "file_fingerprint",
    "plain",
    "stream_fingerprint",
    "summary",
]

FULL_HASH_BYTES = 1 << 20  # files and streams up to this size are hashed whole
SAMPLE_BLOCKS = 16  # otherwise: this many blocks, evenly spread
BLOCK_BYTES = 1 << 16
_SHOWN = 4  # changes named in a refusal (then "and N more")


class DataChangedError(DataError):
    """``--resume`` on data that differs from the data the checkpoint was made from."""


def _hash() -> Any:
    return hashlib.blake2b(digest_size=12)


def _offsets(size: int, block: int) -> list[int]:
    return sorted({int(x) for x in np.linspace(0, size - block, SAMPLE_BLOCKS)})


def file_fingerprint(path: str | os.PathLike) -> list:
    """``[size, hash]`` of one file: the whole file when small, sampled blocks when large."""
    size = os.stat(path).st_size
    h = _hash()
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            h.update(f.read())
        else:
            for offset in _offsets(size, BLOCK_BYTES):
                f.seek(offset)
                h.update(f.read(BLOCK_BYTES))
    return [size, h.hexdigest()]


def _update(h: Any, values: Any, n: int) -> None:
    """Feed ``values[:n]`` (as int64) to ``h``: whole when small, else ``SAMPLE_BLOCKS`` blocks.

    Only slices are read, so a sharded or memory-mapped stream is never read whole.
    """
    block = max(1, BLOCK_BYTES // 8)
    if n * 8 <= FULL_HASH_BYTES:
        h.update(np.asarray(values[0:n], dtype=np.int64).tobytes())
    else:
        for start in _offsets(n, block):
            h.update(np.asarray(values[start : start + block], dtype=np.int64).tobytes())


def stream_fingerprint(stream: Any) -> list:
    """``[tokens, hash]`` of a 1-D token stream (whole when small, else sampled blocks).

    The hash reads the token values (as int64), so the same ids in another dtype hash alike.
    A stream with a ``loss_mask`` (SFT) also hashes the mask and its example ``starts``: the
    same ids with another prompt/response split (or other example bounds) train differently.
    """
    n = int(stream.shape[0])
    h = _hash()
    h.update(str(n).encode())
    _update(h, stream, n)
    mask = getattr(stream, "loss_mask", None)
    if mask is not None:
        h.update(b"loss_mask")
        _update(h, mask, n)
        starts = np.asarray(getattr(stream, "starts", ()), dtype=np.int64)
        h.update(b"starts")
        _update(h, starts, int(starts.shape[0]))
    return [n, h.hexdigest()]


def _files(label: str, root: str) -> dict[str, list]:
    """``{"label/relative name": [size, hash]}`` of a file, or of every visible file below."""
    path = Path(root)
    if path.is_file():
        return {f"{label}/{path.name}": file_fingerprint(path)}
    if not path.is_dir():
        return {f"{label}/": [None, "missing"]}
    out = {}
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[f"{label}/{rel.as_posix()}"] = file_fingerprint(f)
    return out


def data_fingerprint(
    data: Any, corpus: DomainCorpus | None = None, *, anchors: Any = None, anchor_path: str = ""
) -> dict:
    """The fingerprint of a job's data (JSON-serialisable; compare with ``data_changes``).

    Args:
        data: the job's ``DataConfig`` (the ``[data]`` table).
        corpus: the loaded corpus (``None``: files only).
        anchors: ADAPT anchor batches (dicts with ``tokens``), if any.
        anchor_path: ``train.adapt_anchor`` (a file or folder), if any.

    Returns:
        ``{"files": {...}, "streams": {...}, "vocab_size": V, "suite": {...}, "anchors": [...]}``.
    """
    roots = {
        "data.path": data.path,
        "data.val_path": data.val_path,
        "data.target_path": data.target_path,
        "data.hf_dataset": data.hf_dataset,
        "data.tokenizer": data.tokenizer,
        "train.adapt_anchor": anchor_path,
    }
    files: dict[str, list] = {}
    for label, root in roots.items():
        if root:
            files.update(_files(label, root))
    out: dict[str, Any] = {"files": files}
    if not (data.path or data.hf_dataset):
        out["suite"] = {
            "suite": data.suite,
            "seed": data.seed,
            "vocab_size": data.suite_vocab_size,
            "tokens_per_domain": data.suite_tokens_per_domain,
            "val": data.suite_val,
        }
    if corpus is not None:
        streams = {f"training domain {d!r}": s for d, s in zip(corpus.domains, corpus.train)}
        streams.update(
            {f"validation domain {d!r}": s for d, s in zip(corpus.val_domains, corpus.val)}
        )
        out["streams"] = {
            name: stream_fingerprint(s)
            for name, s in streams.items()
            if not isinstance(s, StreamedDomain)
        }
        out["vocab_size"] = int(corpus.vocab_size)
    if anchors:
        tokens = [np.asarray(b["tokens"]).reshape(-1) for b in anchors]
        out["anchors"] = stream_fingerprint(np.concatenate(tokens))
    return plain(out)


def plain(tree: Any) -> Any:
    """``tree`` as it reads back from a checkpoint's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(tree))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"table.key": value}`` of nested mappings (an empty table is a value of its own)."""
    if not isinstance(tree, Mapping) or (prefix and not tree):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality with NaN equal to NaN (also inside lists)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _absent(value: Any) -> str:
    return "(absent)" if value is _MISSING else repr(value)


_MISSING = object()


def config_changes(old: Mapping, new: Mapping, defaults: Mapping | None = None) -> list[str]:
    """``"table.key: old -> new"`` for every key whose value differs (NaN equals NaN).

    Args:
        old: the configuration mapping a checkpoint was made with (tables of keys).
        new: the current one.
        defaults: the default configuration: a key of ``new`` that ``old`` lacks (a key added
            by a later tandem) takes its default value there, so older checkpoints resume.

    Returns:
        The differences, sorted by key (empty when the two are the same).
    """
    a, b = _flat(old), _flat(new)
    if defaults is not None:
        d = _flat(defaults)
        a.update({key: d[key] for key in b.keys() - a.keys() if key in d})
    return [
        f"{key}: {_absent(a.get(key, _MISSING))} -> {_absent(b.get(key, _MISSING))}"
        for key in sorted(set(a) | set(b))
        if not _same(a.get(key, _MISSING), b.get(key, _MISSING))
    ]


def _describe(name: str, old: Any, new: Any, unit: str) -> str:
    if old is None:
        return f"{name} added"
    if new is None:
        return f"{name} removed"
    if old[0] != new[0]:
        return f"{name}: {old[0]} -> {new[0]} {unit}"
    return f"{name}: content changed ({new[0]} {unit})"


def data_changes(old: Mapping, new: Mapping) -> list[str]:
    """What differs between two ``data_fingerprint``s, one phrase per change."""
    out = []
    for group, unit in (("files", "bytes"), ("streams", "tokens")):
        a, b = old.get(group) or {}, new.get(group) or {}
        for name in [*a, *(k for k in b if k not in a)]:
            if not _same(a.get(name), b.get(name)):
                out.append(_describe(name, a.get(name), b.get(name), unit))
    for key in ("vocab_size", "suite", "anchors"):
        if not _same(old.get(key), new.get(key)):
            label = "ADAPT anchors" if key == "anchors" else key.replace("_", " ")
            out.append(f"{label}: {old.get(key)} -> {new.get(key)}")
    return out


def summary(changes: list[str]) -> str:
    """The first few changes on one line, and how many more."""
    shown = "; ".join(changes[:_SHOWN])
    more = len(changes) - _SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def check_resume(
    saved: Mapping,
    current: Mapping,
    where: Path,
    echo: Any = print,
    defaults: Mapping | None = None,
) -> None:
    """Refuse to resume a checkpoint made from another configuration or other data.

    Args:
        saved: the checkpoint's metadata (``config``, ``data``).
        current: the same for this job.
        where: the checkpoint (for the message).
        echo: prints a note when the checkpoint has no data fingerprint (older tandem).
        defaults: the default configuration, for keys the checkpoint predates.

    Raises:
        ConfigError: the configuration differs (names each ``table.key``: old -> new).
        DataChangedError: the data differs (names each file or domain that changed).
    """
    changes = config_changes(saved.get("config") or {}, current["config"], defaults)
    if changes:
        raise ConfigError(
            f"{where} was written with a different configuration ({summary(changes)}); resume "
            "with the same config (see its config.toml) or start a new run_dir"
        )
    if "data" not in saved:
        echo(f"note: {where} has no data fingerprint (an older tandem); the data is not checked")
        return
    changes = data_changes(saved["data"], current["data"])
    if changes:
        raise DataChangedError(
            f"{where} was made from other data ({summary(changes)}); resume on the same data "
            "or start a new run_dir"
        )
