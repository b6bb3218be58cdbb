"""The Backend protocol and its discovery by name through the entry-point group ``tandem.backends``.

A backend supplies what the Array API cannot express: a native segment sum, the collective that sums
statistics over ranks, a deep copy of a training state (parameters AND optimizer state) for twin
synchronisation, and, optionally, a ``TwinTrainer``. Third parties register one with::

    [project.entry-points."tandem.backends"]
    mybackend = "my_package:MyBackend"   # a class or zero-argument factory returning a Backend

Discovery is lazy (xarray's way): nothing is imported until ``load_backend`` asks for a name.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import warnings
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import array_api_compat.numpy
import numpy as np

from ._utils import Array

__all__ = ["ENTRY_POINT_GROUP", "Backend", "NumpyBackend", "available_backends", "load_backend"]

ENTRY_POINT_GROUP = "tandem.backends"
_BUILTIN = {"numpy": "tandem_core.backend:NumpyBackend"}


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. ``TwinTrainer`` may be ``None`` for array-only backends."""

    name: str
    xp: Any  # the Array API namespace of the backend's arrays
    TwinTrainer: Any

    def segment_sum(self, data: Array, segment_ids: Array, num_segments: int) -> Array:
        """Sum rows of ``data (B, ...)`` into ``num_segments`` segments -> ``(M, ...)``."""

    def all_reduce_sum(self, x: Array) -> Array:
        """Sum ``x`` over all ranks / devices (identity when not distributed)."""

    def copy_state(self, state: Any) -> Any:
        """Deep copy of a training state (params AND optimizer state) sharing no storage."""


class NumpyBackend:
    """The pure-numpy reference backend: no framework, single process, no trainer."""

    name = "numpy"
    xp = array_api_compat.numpy
    TwinTrainer = None

    def segment_sum(self, data: Array, segment_ids: Array, num_segments: int) -> Array:
        """``np.add.at`` segment sum: ``data (B, ...)``, ``segment_ids (B,)`` -> ``(M, ...)``."""
        data = np.asarray(data)
        out = np.zeros((num_segments,) + data.shape[1:], dtype=data.dtype)
        np.add.at(out, np.asarray(segment_ids), data)
        return out

    def all_reduce_sum(self, x: Array) -> Array:
        """Identity: one process."""
        return x

    def copy_state(self, state: Any) -> Any:
        """``copy.deepcopy``."""
        return copy.deepcopy(state)


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"backend {ep.name!r} registered twice ({found[ep.name].value} and {ep.value}); "
                "using the first",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def available_backends() -> list[str]:
    """Names of the registered backends (entry points plus the built-in ``numpy``), sorted.

    A name is listed when registered; whether its framework imports is checked by ``load_backend``.
    """
    return sorted(set(_BUILTIN) | set(_entry_points()))


@functools.cache
def load_backend(name: str) -> Backend:
    """Load a backend by name (``"numpy"``, ``"torch"``, ``"jax"`` or a third party's).

    Args:
        name: the entry-point name.

    Returns:
        The backend instance (cached: one per name and process).

    Raises:
        ValueError: for an unknown name (the message lists the registered ones).
        ImportError: when the backend's framework is not installed (with the extra to install).
    """
    eps = _entry_points()
    if name in eps:
        target = eps[name].load
    elif name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        target = lambda: getattr(importlib.import_module(module), attr)  # noqa: E731
    else:
        raise ValueError(
            f"unknown backend {name!r}; installed backends: {', '.join(available_backends())}"
        )
    try:
        obj = target()
    except ImportError as err:
        raise ImportError(
            f"backend {name!r} is registered but its framework is missing ({err}); "
            f"install it with: pip install 'tandem-mixture[{name}]'"
        ) from err
    backend = obj() if callable(obj) else obj
    if not isinstance(backend, Backend):
        raise TypeError(
            f"entry point {name!r} gave {type(backend).__name__}, which is not a tandem Backend"
        )
    return backend
