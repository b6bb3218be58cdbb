"""The run directory: config.toml, mixture.json, metrics.jsonl, mixture.png, the checkpoint.

The checkpoint is checkpoint.npz (one file, by process 0), or with ``backend.checkpoint =
"sharded"`` the folder checkpoint.sharded/ (``step-N/`` folders: every process's shards, written
by its backend's library, and process 0's host state; ``tandem_core.run.sharded``), one scheme
for every backend.

One live run owns a directory: it holds an exclusive lock on ``run_dir/.lock`` (``flock``; the
file names the holder's pid, host and start time). The OS drops the lock when the process ends,
however it ends, so a crashed run never leaves the directory locked; a second run is refused
with a message naming the holder. The RunDirs of one process share its lock.

Every file but metrics.jsonl is written atomically (temporary file in the same folder, fsync,
rename): an interrupted run leaves the previous complete version or nothing, never half a file.
metrics.jsonl is appended line by line (each line flushed and fsynced); a line cut short by a
crash is never read back as a row, and on resume the file is rewritten from the checkpoint so it
never holds rows the resumed run will write again. Temporary files a killed run left behind are
deleted when the next run (or resume) takes the directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

import tandem_core as tc
from tandem_core.run import RunResult, sharded
from tandem_core.state import atomic_write, temp_files

from .run_lock import RunDirLocked, RunLock, run_lock

__all__ = [
    "MIXTURE_FORMAT",
    "RunDir",
    "RunDirLocked",
    "atomic_write",
    "read_mixture",
    "run_lock",
    "versions",
]

MIXTURE_FORMAT = "tandem-mixture"
OUTPUTS = ("metrics.jsonl", "config.toml", "checkpoint.npz", "mixture.json", "mixture.png")
_WRITTEN = (*OUTPUTS, "taskpgm.json", "affinity.png")  # files of the run's (atomic) writers


def versions() -> dict[str, str]:
    """Versions of tandem and of the frameworks that are installed (for mixture.json)."""
    out = {"tandem": tc.__version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "jax", "equinox", "optax", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


class RunDir:
    """One run's output folder.

    Args:
        path: the folder.
        resume: continue the run found there (its checkpoint must exist).
        overwrite: replace a previous run's files instead of refusing.
        read_only: never write (data-parallel ranks other than 0 read the checkpoint only).

    A writing RunDir holds the folder's lock until ``close()`` (or until it is garbage
    collected, or the process ends); it deletes the temporary files a killed writer left.

    Raises:
        RunDirLocked: another live run holds the folder (a ``FileExistsError``).
        FileExistsError: the folder holds an earlier run's output (any of ``OUTPUTS``) and
            neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError: ``resume`` without a checkpoint.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        read_only: bool = False,
    ):
        self.path = Path(path)
        self.read_only = read_only  # data-parallel ranks other than 0: read, never write
        self._release: Any = None
        if resume and not self.has_checkpoint() and (read_only or not self.path.is_dir()):
            raise FileNotFoundError(f"--resume: no checkpoint at {self.checkpoint}")
        if read_only:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(self.path)
        self._release = weakref.finalize(self, lock.release)
        try:
            self._claim(resume=resume, overwrite=overwrite)
        except BaseException:
            self.close()
            raise

    def _claim(self, *, resume: bool, overwrite: bool) -> None:
        """Under the lock: clear what a killed writer left, then check for an earlier run."""
        for name in _WRITTEN:  # no writer of ours is alive: every temporary file is stale
            for tmp in temp_files(self.path / name):
                tmp.unlink(missing_ok=True)
        found = [name for name in OUTPUTS if (self.path / name).exists()]
        has_checkpoint = self.has_checkpoint()
        if resume and not has_checkpoint:
            why = "; it stopped before its first one: pass --overwrite to start it again"
            raise FileNotFoundError(
                f"--resume: no checkpoint at {self.checkpoint}{why if found else ''}"
            )
        found += [self.shards.name] if self.shards.is_dir() else []
        if found and not resume and not overwrite:
            hint = (
                "pass --resume to continue it or --overwrite to replace it"
                if has_checkpoint
                else "it stopped before its first checkpoint: pass --overwrite to start it again"
            )
            raise FileExistsError(f"{self.path} already holds a run ({', '.join(found)}); {hint}")
        if overwrite and not resume:
            for name in OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.shards, ignore_errors=True)
        if resume:
            self._repair_metrics()

    def close(self) -> None:
        """Release the directory (the lock); the object can still read, and write if it must."""
        if self._release is not None:
            self._release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    config = property(lambda self: self.path / "config.toml")
    mixture = property(lambda self: self.path / "mixture.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    plot = property(lambda self: self.path / "mixture.png")
    checkpoint = property(lambda self: self.path / "checkpoint.npz")
    shards = property(lambda self: self.path / "checkpoint.sharded")  # backend.checkpoint

    def has_checkpoint(self) -> bool:
        """checkpoint.npz, or a complete step folder under checkpoint.sharded."""
        return self.checkpoint.exists() or sharded.latest(self.shards) is not None

    def write_config(self, mapping: dict) -> None:
        """The resolved configuration as TOML (``None`` values left out)."""
        if self.read_only:
            return
        atomic_write(self.config, tomli_w.dumps(_drop_none(mapping)))

    def append_metrics(self, row: dict) -> None:
        """Append one JSON line and flush it to disk (a failed write is taken back)."""
        if self.read_only:
            return
        line = (json.dumps(row, default=_json_default) + "\n").encode()
        with open(self.metrics, "ab") as f:
            end = f.seek(0, os.SEEK_END)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    f.truncate(end)  # no half line (disk full)
                raise

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl by ``rows`` (resume: the checkpoint's rows)."""
        if self.read_only:
            return
        atomic_write(
            self.metrics, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
        )

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl (a last line cut short by a crash is not a row)."""
        if not self.metrics.exists():
            return []
        lines = self.metrics.read_text().split("\n")[:-1]  # the text after the last newline: cut
        return [json.loads(line) for line in lines if line.strip()]

    def _repair_metrics(self) -> None:
        """Drop a last line cut short by a crash (resume)."""
        if not self.metrics.exists():
            return
        data = self.metrics.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.metrics, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def save_checkpoint(self, state: dict, metadata: dict | None = None) -> None:
        """Atomic, checksummed checkpoint (``tandem_core.save_state``)."""
        if self.read_only:
            return
        tc.save_state(self.checkpoint, state, metadata=metadata)

    def load_checkpoint(self) -> tuple[dict, dict]:
        """``(state, metadata)``; a truncated or corrupted file raises ``CorruptStateError``."""
        return tc.load_state(self.checkpoint), tc.read_metadata(self.checkpoint)

    def save_sharded(self, engine: Any, state: dict, *, step: int, metadata: dict) -> Path:
        """A sharded checkpoint under checkpoint.sharded: EVERY process calls it (read-only too).

        The engine's backend writes it (``engine.save_sharded``): torch with
        ``torch.distributed.checkpoint``, JAX with orbax; the step folders are the same.
        """
        return engine.save_sharded(self.shards, state, step=step, metadata=metadata)

    def load_sharded(self, engine: Any) -> tuple[dict, dict]:
        """``(host state, metadata)`` of the newest complete sharded checkpoint (every rank)."""
        return engine.load_sharded(self.shards)

    def write_mixture(self, result: RunResult, *, backend: str, extra: dict | None = None) -> Path:
        """mixture.json: average (the default output), last, trajectory, names, method, versions."""
        if self.read_only:
            return self.mixture
        doc = {
            "format": MIXTURE_FORMAT,
            "version": 1,
            "method": result.method,
            "backend": backend,
            "domains": list(result.domains),
            "average": dict(zip(result.domains, map(float, result.average))),
            "last": dict(zip(result.domains, map(float, result.last))),
            "trajectory": np.asarray(result.trajectory, dtype=float).round(8).tolist(),
            "steps": int(result.steps),
            "val_domains": list(result.val_domains),
            "val_loss": None
            if result.val_losses is None
            else dict(zip(result.val_domains, map(float, result.val_losses))),
            "versions": versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        return atomic_write(self.mixture, json.dumps(doc, indent=2, default=_json_default) + "\n")


def read_mixture(path: str | os.PathLike, which: str = "average") -> dict[str, float]:
    """Domain weights from a mixture.json (or a run directory holding one).

    Args:
        path: the file or its run directory.
        which: ``"average"`` (default output) or ``"last"``.

    Returns:
        ``{domain: weight}``, weights summing to 1.

    Raises:
        ValueError: not a tandem mixture file, unknown ``which``, or weights that are not a
            distribution.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "mixture.json"
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if doc.get("format") != MIXTURE_FORMAT:
        raise ValueError(f"{path}: not a tandem mixture file (format {doc.get('format')!r})")
    if which not in ("average", "last"):
        raise ValueError(f"which={which!r}: choose 'average' or 'last'")
    weights = {str(k): float(v) for k, v in doc[which].items()}
    total = sum(weights.values())
    if any(w < 0 for w in weights.values()) or abs(total - 1) > 1e-4:
        raise ValueError(f"{path}: {which} weights are not a distribution (sum {total})")
    return {k: v / total for k, v in weights.items()}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
