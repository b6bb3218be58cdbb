"""Sharded checkpoints (``backend.checkpoint = "sharded"``): each rank writes its own shards.

The twins' parameters and optimizer states go through ``torch.distributed.checkpoint`` (DCP):
under FSDP every rank writes the shards it holds, with no full gather; under DDP DCP splits the
replicated tensors between the ranks. The small host state (mixture, sampler, counters, RNG,
fingerprint metadata) is one checksummed npz (``tandem_core.save_state``) written by rank 0.

Layout of ``root`` (``run_dir/checkpoint.dcp``)::

    step-N/shards/   DCP files (``.metadata`` and one or more ``.distcp`` per rank)
    step-N/host.npz  the host state
    step-N/COMPLETE  JSON: step, sha256 of host.npz, the shard files and their sizes

A checkpoint is complete or ignored: it is written into ``step-N.tmp/``; only when every rank
has finished (a barrier) does rank 0 write ``COMPLETE`` and rename the folder to ``step-N``.
Older steps are removed after that, so a crash at any point leaves a complete checkpoint.
DCP reshards on load: a checkpoint of 2 FSDP ranks loads into one process, and vice versa.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import tandem_core as tc
from tandem_core.state import atomic_write

from .distributed import world_and_rank
from .twins import Twins

__all__ = ["latest", "load", "load_twins", "remove_incomplete", "save", "save_twins"]

COMPLETE = "COMPLETE"
HOST = "host.npz"
SHARDS = "shards"
_STEP = re.compile(r"step-(\d+)")


# ---------------------------------------------------------------------- twins <-> DCP
def _twins_state(twins: Twins) -> dict:
    """``{proxy|reference: {model, optim}}``: DTensor shards under FSDP, no gather."""
    twins.reshard()
    out = {}
    for name, module, opt in (
        ("proxy", twins.proxy, twins.opt_proxy),
        ("reference", twins.reference, twins.opt_reference),
    ):
        model_sd, optim_sd = get_state_dict(module, opt)
        out[name] = {"model": model_sd, "optim": optim_sd}
    return out


def save_twins(twins: Twins, path: str | os.PathLike) -> None:
    """Both models and optimizer states into the DCP folder ``path`` (every rank calls it)."""
    state = _twins_state(twins)
    with _quiet():
        dcp.save(state, checkpoint_id=str(path), no_dist=_single())


def load_twins(twins: Twins, path: str | os.PathLike) -> None:
    """Inverse of ``save_twins`` into ``twins`` laid out as they are (any world size)."""
    state = _twins_state(twins)  # the templates: DCP fills them in place
    with _quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=_single())
    for name, module, opt in (
        ("proxy", twins.proxy, twins.opt_proxy),
        ("reference", twins.reference, twins.opt_reference),
    ):
        set_state_dict(
            module,
            opt,
            model_state_dict=state[name]["model"],
            optim_state_dict=state[name]["optim"],
        )


# ---------------------------------------------------------------------- the folder
def save(
    root: str | os.PathLike,
    step: int,
    host_state: dict,
    twins: Twins,
    *,
    metadata: dict | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically (every rank calls it); returns that folder.

    Args:
        root: the checkpoint folder (created if missing).
        step: the step the name records (the proxy step).
        host_state: the small state (rank 0's is written), e.g. ``MixtureRun.state_dict()``
            with an engine in sharded mode.
        twins: the models and optimizers to shard.
        metadata: JSON-serialisable, stored in host.npz (the run's fingerprint).
    """
    root, (_, rank) = Path(root), world_and_rank()
    tmp, final = root / f"step-{step}.tmp", root / f"step-{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save of the same step
        tmp.mkdir(parents=True)
    _barrier()
    save_twins(twins, tmp / SHARDS)
    if rank == 0:
        tc.save_state(tmp / HOST, host_state, metadata=metadata)
    _before_commit(tmp)
    _barrier()  # every rank's shards are on disk
    if rank == 0:
        _commit(tmp, final, step)
        _prune(root, keep=final)
    _barrier()  # no rank goes on (or resumes) before the folder is renamed
    return final


def load(root: str | os.PathLike, twins: Twins) -> tuple[dict, dict]:
    """The newest complete checkpoint under ``root``: shards into ``twins``, ``(host, meta)``.

    Every rank calls it; afterwards rank 0 removes incomplete folders.

    Raises:
        FileNotFoundError: no complete checkpoint under ``root``.
    """
    path = latest(root)
    if path is None:
        raise FileNotFoundError(f"no complete sharded checkpoint under {root}")
    load_twins(twins, path / SHARDS)
    host = tc.load_state(path / HOST), tc.read_metadata(path / HOST)
    _barrier()  # every rank has chosen its folder before any is removed
    if world_and_rank()[1] == 0:
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


def _before_commit(tmp: Path) -> None:
    """Between a rank's shard write and the barrier before the marker (a test seam)."""
    del tmp


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
    """``{file name: bytes}`` of the DCP folder (its files are not checksummed: too large)."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX: the directory entry lives in the parent)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _single() -> bool:
    """One process: DCP without collectives."""
    return world_and_rank()[0] == 1


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence DCP's warning that one process "assumes" single-process mode: it is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if world_and_rank()[0] > 1:
        dist.barrier()
