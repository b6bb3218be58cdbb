"""The step folders of a sharded checkpoint, the same for every backend (framework-free).

With ``backend.checkpoint = "sharded"`` every process writes its own shards of the twins with
its framework's library (torch: ``torch.distributed.checkpoint``; JAX: orbax), and process 0
writes the small host state (mixture, sampler position, counters, metrics, the fingerprint) as
one checksummed npz (``tandem_core.save_state``). Layout of ``root``
(``run_dir/checkpoint.sharded``)::

    step-N/shards/   the library's files (one or more per process)
    step-N/host.npz  the host state
    step-N/COMPLETE  JSON: step, sha256 of host.npz, every shard file's relative path and size

A checkpoint is complete or ignored: it is written into ``step-N.tmp/``; only when every
process has finished (a barrier) does process 0 write ``COMPLETE`` and rename the folder to
``step-N``. Older steps are removed after that, so a crash at any point leaves a complete
checkpoint. A backend passes its shard writer and reader, its rank and its barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..state import atomic_write, load_state, read_metadata, save_state

__all__ = ["COMPLETE", "HOST", "SHARDS", "latest", "load", "remove_incomplete", "save"]

COMPLETE = "COMPLETE"
HOST = "host.npz"
SHARDS = "shards"
_STEP = re.compile(r"step-(\d+)")


def save(
    root: str | os.PathLike,
    step: int,
    host_state: dict,
    write_shards: Callable[[Path], None],
    *,
    rank: int,
    barrier: Callable[[], None],
    metadata: dict | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically (every process calls it); returns that folder.

    Args:
        root: the checkpoint folder (created if missing).
        step: the step the name records (the proxy step).
        host_state: the small state; process 0's is written.
        write_shards: ``f(folder)`` writes this process's shards into ``folder`` (a collective
            call of the library: every process calls it).
        rank: this process's index (0 writes the host state and commits).
        barrier: waits for every process (a no-op for one process).
        metadata: JSON-serialisable, stored in host.npz (the run's fingerprint).
        before_commit: called with the temporary folder after this process's writes, before
            the barrier that precedes the marker (a test seam: a process "dies" there).
    """
    root = Path(root)
    tmp, final = root / f"step-{step}.tmp", root / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save of the same step
        tmp.mkdir(parents=True)
    barrier()
    write_shards(tmp / SHARDS)
    if rank == 0:
        save_state(tmp / HOST, host_state, metadata=metadata)
    if before_commit is not None:
        before_commit(tmp)
    barrier()  # every process's shards are on disk
    if rank == 0:
        _commit(tmp, final, step)
        _prune(root, keep=final)
    barrier()  # no process goes on (or resumes) before the folder is renamed
    return final


def load(
    root: str | os.PathLike,
    read_shards: Callable[[Path], Any],
    *,
    rank: int,
    barrier: Callable[[], None],
) -> tuple[dict, dict]:
    """The newest complete checkpoint under ``root``: ``read_shards(folder)``, ``(host, meta)``.

    Every process calls it; afterwards process 0 removes incomplete folders.

    Raises:
        FileNotFoundError: no complete checkpoint under ``root``.
    """
    path = latest(root)
    if path is None:
        raise FileNotFoundError(f"no complete sharded checkpoint under {root}")
    read_shards(path / SHARDS)
    host = load_state(path / HOST), read_metadata(path / HOST)
    barrier()  # every process has chosen its folder before any is removed
    if rank == 0:
        remove_incomplete(root)
    return host


def latest(root: str | os.PathLike) -> Path | None:
    """The complete ``step-N`` folder with the largest N (``None``: none)."""
    found = [(int(m.group(1)), p) for p, m in _steps(Path(root)) if _is_complete(p)]
    return max(found)[1] if found else None


def remove_incomplete(root: str | os.PathLike) -> list[Path]:
    """Delete every folder under ``root`` that is not a complete ``step-N`` (no writer alive)."""
    root = Path(root)
    if not root.is_dir():
        return []
    complete = {p for p, _ in _steps(root) if _is_complete(p)}
    gone = [p for p in root.iterdir() if p.is_dir() and p not in complete]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _steps(root: Path) -> list[tuple[Path, re.Match]]:
    if not root.is_dir():
        return []
    return [(p, m) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and p.is_dir()]


def _commit(tmp: Path, final: Path, step: int) -> None:
    """``COMPLETE`` into ``tmp``, then ``tmp -> final`` (an older ``final`` is replaced)."""
    marker = {"step": step, "host_sha256": _sha256(tmp / HOST), "files": _sizes(tmp / SHARDS)}
    atomic_write(tmp / COMPLETE, json.dumps(marker, indent=1) + "\n")
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (the end of a run): keep it until replaced
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def _prune(root: Path, keep: Path) -> None:
    """Remove every other step folder, complete or not (``keep`` is complete now)."""
    for p in root.iterdir():
        if p.is_dir() and p != keep and p.name.startswith("step-"):
            shutil.rmtree(p, ignore_errors=True)


def _is_complete(path: Path) -> bool:
    """``COMPLETE`` exists and matches host.npz and the shard files' names and sizes."""
    try:
        marker = json.loads((path / COMPLETE).read_text())
        return marker["host_sha256"] == _sha256(path / HOST) and marker["files"] == _sizes(
            path / SHARDS
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sizes(folder: Path) -> dict[str, int]:
    """``{relative path: bytes}`` of the shard files (not checksummed: too large)."""
    if not folder.is_dir():
        raise FileNotFoundError(folder)
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the parent)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
