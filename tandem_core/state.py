"""Portable, versioned serialization of states: nests of NamedTuples, tuples, dicts of arrays.

Format: one ``.npz`` (no pickle) holding each array leaf under its tree path, plus a ``__meta__``
entry with the JSON tree structure, the format version, user metadata and a SHA-256 of the arrays.
Files are written atomically (temporary file, fsync, rename) and verified when read, so a truncated
or corrupted file is reported instead of loaded. A state saved from one namespace loads into any
other.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import secrets
import stat
import zipfile
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._utils import as_namespace, to_numpy

__all__ = [
    "FORMAT",
    "VERSION",
    "CorruptStateError",
    "atomic_write",
    "load_state",
    "read_metadata",
    "save_state",
    "temp_files",
]

FORMAT = "tandem-state"
VERSION = 1
_META = "__meta__"
_SCALARS = (bool, int, float, str)


class CorruptStateError(ValueError):
    """A state file that is truncated, corrupted, or not a tandem state."""


def _flatten(tree: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    if tree is None or isinstance(tree, _SCALARS):
        return {"kind": "value", "value": tree}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        cls = type(tree)
        fields = {f: _flatten(getattr(tree, f), f"{path}{f}/", arrays) for f in tree._fields}
        return {
            "kind": "namedtuple",
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "fields": fields,
        }
    if isinstance(tree, (tuple, list)):
        items = [_flatten(x, f"{path}{i}/", arrays) for i, x in enumerate(tree)]
        return {"kind": type(tree).__name__, "items": items}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError(f"save_state: dict keys must be strings at {path or '/'}")
        return {
            "kind": "dict",
            "items": {k: _flatten(v, f"{path}{k}/", arrays) for k, v in tree.items()},
        }
    key = path.rstrip("/") or "leaf"
    array = np.asarray(to_numpy(tree), order="C")  # ascontiguousarray makes 0-d 1-d
    if array.dtype.hasobject or array.dtype.kind not in "biufcmMSUV":
        # np.savez would pickle it and load_state (allow_pickle=False) could never read it back
        raise TypeError(
            f"save_state: the leaf at {key!r} ({type(tree).__name__}) is an array of dtype "
            f"{array.dtype}: only numeric, bool and string arrays can be saved; convert it "
            "(e.g. np.asarray(x, dtype=float)) or store it in metadata"
        )
    arrays[key] = array
    return {"kind": "array", "key": key, "dtype": str(getattr(tree, "dtype", arrays[key].dtype))}


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        h.update(f"{key}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_state(path: str | os.PathLike, state: Any, *, metadata: dict | None = None) -> Path:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or none, never half.

    Args:
        path: destination file (``.npz`` is customary).
        state: a nest of NamedTuples, tuples, lists, str-keyed dicts, arrays of any namespace and
            JSON scalars.
        metadata: JSON-serialisable dict stored beside the arrays (config, versions, step).

    Returns:
        The path written.

    Raises:
        TypeError: a leaf that is an object array (or converts to one), or a dict with
            non-string keys; nothing is written.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(state, "", arrays)
    meta = {"format": FORMAT, "version": VERSION, "tree": tree, "metadata": metadata or {}}
    meta["sha256"] = _digest(arrays)
    payload = {**arrays, _META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    return atomic_write(path, lambda f: np.savez(f, **payload))


def atomic_write(path: str | os.PathLike, write: bytes | str | Callable[[Any], None]) -> Path:
    """Write a file through a temporary file in the same folder, fsync and rename.

    A crash or a failing writer (disk full) leaves the previous complete file, or none, never a
    partial one. A failing writer leaves no temporary file behind; a killed process may leave
    one, named ``.<name>.<8 characters>.tmp`` (``temp_files`` finds them). The file gets the
    permissions ``open()`` would give it: those of the file it replaces, else ``0o666`` less the
    umask.

    Args:
        path: destination.
        write: the content (bytes or str) or a function writing into a binary file object.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # keep the mode of the file it replaces (POSIX)
                with contextlib.suppress(FileNotFoundError):
                    os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


_TEMP_TOKEN = r"[a-z0-9_]{8}"  # also matches the names of tempfile.mkstemp (older versions)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new ``.<name>.<token>.tmp`` beside ``path``; mode 0o666 less the umask (like open)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files that ``atomic_write(path, ...)`` left behind (a killed writer).

    Only tandem's own pattern, ``.<name>.<8 characters>.tmp`` in the same folder, matches.
    Delete them only when no writer of ``path`` is alive (e.g. under the run directory's lock).
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + _TEMP_TOKEN + re.escape(".tmp"))
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def _read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CorruptStateError(
            f"{path}: not a readable tandem state (truncated or corrupted: {err})"
        ) from err
    if _META not in arrays:
        raise CorruptStateError(f"{path}: no {_META} entry; not a tandem state file")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptStateError(f"{path}: unreadable metadata ({err})") from err
    if meta.get("format") != FORMAT:
        raise CorruptStateError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version", 0) > VERSION:
        raise CorruptStateError(
            f"{path}: state version {meta['version']} is newer than {VERSION}; upgrade tandem"
        )
    if _digest(arrays) != meta.get("sha256"):
        raise CorruptStateError(f"{path}: checksum mismatch; the file is corrupted")
    return meta, arrays


def read_metadata(path: str | os.PathLike) -> dict:
    """The user metadata of a state file (verified like ``load_state``)."""
    return _read(Path(path))[0]["metadata"]


def _namedtuple_class(spec: str, fields: list[str]) -> type:
    module, _, qualname = spec.partition(":")
    if module.split(".")[0].startswith(
        "tandem_"
    ):  # import only our own packages, never arbitrary code
        try:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            if tuple(getattr(obj, "_fields", ())) == tuple(fields):
                return obj
        except (ImportError, AttributeError):
            pass
    return namedtuple(qualname.split(".")[-1], fields)


def _build(node: dict, arrays: dict[str, np.ndarray], convert: Any, like: Any) -> Any:
    kind = node["kind"]
    if kind == "value":
        return node["value"]
    if kind == "array":
        return convert(arrays[node["key"]], node["dtype"], like)
    if kind == "namedtuple":
        fields = list(node["fields"])
        cls = type(like) if like is not None else _namedtuple_class(node["class"], fields)
        sub = [getattr(like, f) if like is not None else None for f in fields]
        return cls(*[_build(node["fields"][f], arrays, convert, s) for f, s in zip(fields, sub)])
    if kind in ("tuple", "list"):
        items = node["items"]
        sub = list(like) if like is not None else [None] * len(items)
        built = [_build(n, arrays, convert, s) for n, s in zip(items, sub)]
        return tuple(built) if kind == "tuple" else built
    if kind == "dict":
        return {
            k: _build(n, arrays, convert, None if like is None else like[k])
            for k, n in node["items"].items()
        }
    raise CorruptStateError(f"unknown node kind {kind!r}")


def _structure(node: dict) -> Any:
    kind = node["kind"]
    if kind == "namedtuple":
        return (kind, tuple((f, _structure(n)) for f, n in node["fields"].items()))
    if kind in ("tuple", "list"):
        return ("seq", tuple(_structure(n) for n in node["items"]))
    if kind == "dict":
        return (kind, tuple(sorted((k, _structure(n)) for k, n in node["items"].items())))
    return kind


def load_state(
    path: str | os.PathLike, *, like: Any = None, xp: Any = None, device: Any = None
) -> Any:
    """Read a state written by ``save_state`` into any namespace.

    Args:
        path: the file.
        like: optional template state (e.g. ``transform.init(M)``): its types are reused and its
            structure must match the file's.
        xp: target namespace (``numpy``, ``torch``, ``jax.numpy``, ...); numpy by default.
        device: target device, passed to ``xp.asarray``.

    Returns:
        The state, with arrays in ``xp`` on ``device`` and their saved dtypes.

    Raises:
        CorruptStateError: truncated, corrupted, foreign or too-new file, or a structure that
            differs from ``like``.
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    meta, arrays = _read(path)
    if like is not None:
        arrays_like: dict[str, np.ndarray] = {}
        if _structure(_flatten(like, "", arrays_like)) != _structure(meta["tree"]):
            raise CorruptStateError(
                f"{path}: the saved state's structure differs from the template `like`"
            )
    xp = as_namespace(xp)

    def convert(a: np.ndarray, dtype: str, _like: Any) -> Any:
        out = xp.asarray(a, device=device) if device is not None else xp.asarray(a)
        target = getattr(xp, dtype.rsplit(".", 1)[-1], None)
        if target is not None and dtype.endswith("bfloat16"):
            out = xp.astype(out, target)
        return out

    return _build(meta["tree"], arrays, convert, like)
