"""Where the engine's arrays live: one device, or a ``data`` mesh that may span processes.

A batch is sharded over the mesh's ``data`` axis; everything else (the twins, their optimizer
states, the mixture state) is replicated. Every placement goes from host numpy values to this
process's own devices with an explicit ``jax.device_put`` per device, and the global array is
assembled from those pieces (``jax.make_array_from_single_device_arrays``). No array ever moves
between processes, so one mesh can span hosts (JAX refuses cross-host device transfers), and a
loop stays legal under ``jax.transfer_guard("disallow")``.

In a job of N processes every process draws the same global batch (the sampler is seeded the
same everywhere) and places only the rows that its own devices hold: process p computes on rows
``[p B / N, (p + 1) B / N)``. The compiler reduces the per-domain statistics over the mesh, so
every process gets the same statistics and applies the same mixture update
(docs/distributed.md).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tandem_core import ConfigError

__all__ = ["Placement", "mesh_devices"]


class Placement:
    """Host values onto one device (``devices`` of length <= 1) or a ``data`` mesh.

    Args:
        devices: the mesh's devices in order, possibly of several processes (the processes'
            blocks contiguous, as ``mesh_devices`` orders them); ``None``: the default device.
    """

    def __init__(self, devices: list | None = None) -> None:
        devices = list(devices or [])
        self.mesh = Mesh(np.asarray(devices), ("data",)) if len(devices) > 1 else None
        self.processes = len({d.process_index for d in devices}) if devices else 1
        if self.mesh is not None:
            self.rows = NamedSharding(self.mesh, PartitionSpec("data"))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            me = jax.process_index()
            self.local = [d for d in devices if d.process_index == me]

    @property
    def size(self) -> int:
        """Devices of the ``data`` axis (1: no mesh)."""
        return 1 if self.mesh is None else self.mesh.size

    def local_rows(self, rows: int) -> slice:
        """This process's rows of a global batch of ``rows`` rows (all of them without a mesh).

        Raises:
            ConfigError: ``rows`` does not divide by the devices of the ``data`` axis.
        """
        if self.mesh is None:
            return slice(0, rows)
        if rows % self.mesh.size:
            raise ConfigError(
                f"a batch of {rows} rows cannot be split over the {self.mesh.size} devices of "
                "the data axis: choose batch sizes (train.batch_per_domain x domains, "
                "train.val_batch_size, train.eval_per_domain) that divide by them"
            )
        spans = [s[0] for s in self.rows.addressable_devices_indices_map((rows,)).values()]
        start, stop = min(s.start for s in spans), max(s.stop for s in spans)
        return slice(start, stop)

    def shard(self, host: Any) -> jax.Array:
        """``host`` rows ``(B, ...)`` as a global array sharded over ``data``.

        Only this process's rows (``local_rows(B)``) are read and copied to its devices.
        """
        if self.mesh is None:
            return jax.device_put(np.asarray(host))
        shape = tuple(host.shape)
        index = self.rows.addressable_devices_indices_map(shape)
        pieces = [jax.device_put(np.asarray(host[index[d][0]]), d) for d in self.local]
        return jax.make_array_from_single_device_arrays(shape, self.rows, pieces)

    def batch(self, host_batch: dict) -> dict:
        """A host batch on device: rows sharded over ``data`` (this process's rows), dtypes kept."""
        if self.mesh is not None and host_batch:
            self.local_rows(len(next(iter(host_batch.values()))))  # a clear error if uneven
        return {k: self.shard(v) for k, v in host_batch.items()}

    def replicate(self, tree: Any) -> Any:
        """A nest of host (or device) arrays, replicated on every device of the mesh.

        Device arrays are read back to the host first (an explicit ``jax.device_get``); every
        process must pass the same values.
        """
        if self.mesh is None:
            return jax.tree.map(_on_default_device, tree)

        def put(leaf: Any) -> jax.Array:
            host = np.asarray(jax.device_get(leaf))
            pieces = [jax.device_put(host, d) for d in self.local]
            return jax.make_array_from_single_device_arrays(host.shape, self.replicated, pieces)

        return jax.tree.map(put, tree)


def _on_default_device(leaf: Any) -> jax.Array:
    return leaf if isinstance(leaf, jax.Array) else jax.device_put(np.asarray(leaf))


def mesh_devices(per_process: int) -> list:
    """The first ``per_process`` devices of every process, process by process (ordered by id).

    Raises:
        ConfigError: a process has fewer devices.
    """
    found: dict[int, list] = {}
    for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
        found.setdefault(d.process_index, []).append(d)
    short = {p: len(ds) for p, ds in found.items() if len(ds) < per_process}
    if short:
        where = "" if len(found) == 1 else f" in process {min(short)}"
        raise ConfigError(
            f"backend.devices={per_process} but JAX sees {short[min(short)]} device(s){where}"
        )
    return [d for p in sorted(found) for d in found[p][:per_process]]
