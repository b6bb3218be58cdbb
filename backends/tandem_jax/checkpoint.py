"""Checkpoints of the JAX twins: npz leaves, or orbax shards (``backend.checkpoint``).

Both models' and optimizer states' arrays go through orbax (``orbax-checkpoint``, the ``jax``
extra): every process writes the shards it holds of each global array (orbax writes one replica
of a replicated array; a sharded one is written piece by piece by the processes holding it), and
reads back what its own devices need. The twins are saved as flat lists of leaves, like the npz
format, so any engine with the same model and optimizer structure restores them: on the same
number of processes or another one (2 processes -> 1 for analysis, 1 -> 2), onto the shardings
of the engine that loads them.

The step folders, the host state (mixture, sampler position, counters, metrics, fingerprint)
and the COMPLETE marker are the backends' common scheme (``tandem_core.run.sharded``)::

    step-N/shards/   orbax's checkpoint of {proxy, reference, opt_u, opt_w}
    step-N/host.npz  process 0's host state
    step-N/COMPLETE  written after every process's shards are on disk, then step-N.tmp -> step-N

orbax writes its own folder atomically too (a temporary name renamed on commit), inside ours.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tandem_core.run import sharded as steps

from ._core import Twins

__all__ = ["TREES", "load", "load_state_dict", "load_twins", "save", "save_twins", "state_dict"]

TREES = ("proxy", "reference", "opt_u", "opt_w")  # the npz format's names for the same trees
_FIELDS = ("proxy", "reference", "opt_proxy", "opt_reference")


def _ocp() -> Any:
    """orbax.checkpoint, imported on first use (the npz format does not need it)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - the jax extra installs it
        raise ImportError(
            'backend.checkpoint="sharded" on JAX needs orbax: pip install orbax-checkpoint '
            "(or tandem-mixture[jax])"
        ) from err
    return ocp


def _trees(twins: Twins) -> dict[str, list]:
    return {name: jax.tree.leaves(getattr(twins, f)) for name, f in zip(TREES, _FIELDS)}


# ---------------------------------------------------------------------- the npz format
def state_dict(twins: Twins, *, sharded: bool = False) -> dict:
    """Both models' and optimizer states' leaves and the counters (``sharded``: counters only).

    The leaves are global arrays (replicated on a mesh): ``np.asarray`` reads them on any
    process.
    """
    counters = {"counters": list(twins.counters)}
    return counters if sharded else {**_trees(twins), **counters}


def load_state_dict(twins: Twins, state: dict, to_device: Callable[[Any], Any]) -> Twins:
    """``twins`` with ``state_dict``'s arrays put by ``to_device`` (only counters: shards apart).

    Raises:
        ValueError: a tree's number of leaves differs (another model or optimizer).
    """

    def load(like: Any, leaves: list) -> Any:
        treedef = jax.tree.structure(like)
        if treedef.num_leaves != len(leaves):
            raise ValueError(
                f"checkpoint has {len(leaves)} leaves, the engine expects {treedef.num_leaves}"
            )
        return to_device(jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves]))

    fields = {"counters": load(twins.counters, state["counters"])}
    if "proxy" in state:  # else the host part of a sharded checkpoint: the shards load apart
        fields.update({f: load(getattr(twins, f), state[n]) for n, f in zip(TREES, _FIELDS)})
    return dataclasses.replace(twins, **fields)


# ---------------------------------------------------------------------- orbax


def save_twins(twins: Twins, path: str | os.PathLike) -> None:
    """Both models and optimizer states into the orbax folder ``path`` (every process calls it)."""
    ocp = _ocp()
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(Path(path).absolute(), args=ocp.args.StandardSave(_trees(twins)))


def load_twins(twins: Twins, path: str | os.PathLike) -> Twins:
    """``twins`` with the arrays of ``save_twins``'s folder, on ``twins``' shardings.

    Raises:
        ValueError: the checkpoint's trees differ from ``twins``' (another model or optimizer).
    """
    ocp = _ocp()
    like = _trees(twins)
    target = {
        name: [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for a in leaves]
        for name, leaves in like.items()
    }
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        saved = checkpointer.metadata(Path(path).absolute())
        tree = dict(getattr(saved, "item_metadata", saved).items())
        got = {name: len(tree.get(name, ())) for name in TREES}
        want = {name: len(leaves) for name, leaves in like.items()}
        if got != want:
            raise ValueError(f"checkpoint has leaves {got}, the engine expects {want}")
        restored = checkpointer.restore(
            Path(path).absolute(), args=ocp.args.StandardRestore(target)
        )
    fields = {
        f: jax.tree.unflatten(jax.tree.structure(getattr(twins, f)), restored[name])
        for name, f in zip(TREES, _FIELDS)
    }
    return dataclasses.replace(twins, **fields)


def save(
    root: str | os.PathLike,
    step: int,
    host_state: dict,
    twins: Twins,
    *,
    metadata: dict | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically (every process calls it); returns that folder.

    Args:
        root: the checkpoint folder (created if missing).
        step: the step the name records (the proxy step).
        host_state: the small state (process 0's is written), e.g. ``MixtureRun.state_dict()``
            with an engine in sharded mode.
        twins: the models and optimizer states to write with orbax.
        metadata: JSON-serialisable, stored in host.npz (the run's fingerprint).
    """
    return steps.save(
        root,
        step,
        host_state,
        lambda folder: save_twins(twins, folder),
        rank=jax.process_index(),
        barrier=_barrier,
        metadata=metadata,
        before_commit=lambda tmp: _before_commit(tmp),  # looked up per call: tests replace it
    )


def load(root: str | os.PathLike, twins: Twins) -> tuple[Twins, dict, dict]:
    """The newest complete checkpoint under ``root``: ``(twins, host state, metadata)``.

    Every process calls it; afterwards process 0 removes incomplete folders.

    Raises:
        FileNotFoundError: no complete checkpoint under ``root``.
    """
    box: dict[str, Twins] = {}

    def read(folder: Path) -> None:
        box["twins"] = load_twins(twins, folder)

    host, meta = steps.load(root, read, rank=jax.process_index(), barrier=_barrier)
    return box["twins"], host, meta


def _before_commit(tmp: Path) -> None:
    """Between a process's shard write and the barrier before the marker (a test seam)."""
    del tmp


def _barrier() -> None:
    """Every process of a multi-process job reaches this point (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("tandem-sharded-checkpoint")
