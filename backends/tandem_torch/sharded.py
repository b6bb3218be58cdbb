"""Sharded checkpoints (``backend.checkpoint = "sharded"``): each rank writes its own shards.

The twins' parameters and optimizer states go through ``torch.distributed.checkpoint`` (DCP):
under FSDP every rank writes the shards it holds, with no full gather; under DDP DCP splits the
replicated tensors between the ranks. The small host state (mixture, sampler, counters, RNG,
fingerprint metadata) is one checksummed npz (``tandem_core.save_state``) written by rank 0.

Layout of ``root`` (``run_dir/checkpoint.sharded``), the same for every backend
(``tandem_core.run.sharded``)::

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
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from tandem_core.run import sharded as steps
from tandem_core.run.sharded import COMPLETE, HOST, SHARDS, latest, remove_incomplete

from .distributed import world_and_rank
from .twins import Twins

__all__ = [
    "COMPLETE",
    "HOST",
    "SHARDS",
    "latest",
    "load",
    "load_twins",
    "remove_incomplete",
    "save",
    "save_twins",
]


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
    return steps.save(
        root,
        step,
        host_state,
        lambda folder: save_twins(twins, folder),
        rank=world_and_rank()[1],
        barrier=_barrier,
        metadata=metadata,
        before_commit=lambda tmp: _before_commit(tmp),  # looked up per call: tests replace it
    )


def load(root: str | os.PathLike, twins: Twins) -> tuple[dict, dict]:
    """The newest complete checkpoint under ``root``: shards into ``twins``, ``(host, meta)``.

    Every rank calls it; afterwards rank 0 removes incomplete folders.

    Raises:
        FileNotFoundError: no complete checkpoint under ``root``.
    """
    return steps.load(
        root, lambda folder: load_twins(twins, folder), rank=world_and_rank()[1], barrier=_barrier
    )


def _before_commit(tmp: Path) -> None:
    """Between a rank's shard write and the barrier before the marker (a test seam)."""
    del tmp


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
