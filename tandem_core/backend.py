"""The Backend protocols and their discovery by name (entry-point group ``tandem.backends``).

A ``Backend`` supplies what the Array API cannot express: a native segment sum, the collective that
sums statistics over ranks, and a deep copy of a training state (parameters AND optimizer state).
A ``TrainingBackend`` also hands the adapters everything framework-specific that a job needs: its
``[backend]`` options, process setup and launch, models, the run loop's ``Engine``, and timing and
memory facts for benchmarks, so adapters never branch on a backend's name. Third parties register
one with::

    [project.entry-points."tandem.backends"]
    mybackend = "my_package:MyBackend"   # a class or zero-argument factory returning a Backend

Discovery is lazy (xarray's way): nothing is imported until ``load_backend`` asks for a name.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from typing import Any, Protocol, runtime_checkable

import array_api_compat
import array_api_compat.numpy
import numpy as np

from ._plugins import registered
from ._utils import Array
from .errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "NumpyBackend",
    "TrainingBackend",
    "available_backends",
    "load_backend",
    "training_backend",
]

ENTRY_POINT_GROUP = "tandem.backends"
_BUILTIN = {"numpy": "tandem_core.backend:NumpyBackend"}


@runtime_checkable
class Backend(Protocol):
    """What every backend provides (array level)."""

    name: str
    xp: Any  # the Array API namespace of the backend's arrays

    def segment_sum(self, data: Array, segment_ids: Array, num_segments: int) -> Array:
        """Sum rows of ``data (B, ...)`` into ``num_segments`` segments -> ``(M, ...)``."""

    def all_reduce_sum(self, x: Array) -> Array:
        """Sum ``x`` over all ranks / devices (identity when not distributed)."""

    def copy_state(self, state: Any) -> Any:
        """Deep copy of a training state (params AND optimizer state) sharing no storage."""


@runtime_checkable
class TrainingBackend(Backend, Protocol):
    """A backend that trains: what ``tandem optimize`` and the other jobs ask of it.

    ``Options`` is a frozen dataclass: the ``[backend]`` table (validated in ``__post_init__``,
    errors naming ``backend.KEY``).
    """

    Options: type

    def setup(self, options: Any) -> None:
        """Prepare this process: threads, process group or distributed runtime, devices."""

    def rank(self, options: Any) -> int:
        """This process's rank (0 writes the run directory; the others only compute)."""

    def launch(self, argv: list[str], options: Any, *, run_dir: str) -> int | None:
        """Re-run the ``tandem`` command ``argv`` in several processes if ``options`` ask for it.

        Every process writes to ``run_dir``. Returns their exit status, or ``None`` when this
        process should run the job itself.
        """

    def build_model(self, spec: Any, *, vocab_size: int, seq_len: int) -> Any:
        """The proxy the ``ModelSpec`` asks for, as this backend's model type (checked)."""

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is a model of this backend (e.g. a torch ``nn.Module``)."""

    def model_adapter(self, model: Any) -> Any:
        """``model`` seen as ``per_sample_loss(batch)`` / ``hidden_states(batch)``."""

    def make_engine(
        self, model: Any, config: Any, *, num_domains: int, num_val_domains: int, options: Any
    ) -> Any:
        """The ``tandem_core.run.Engine`` that trains ``model`` under ``config``."""

    def block(self, tree: Any) -> None:
        """Wait until queued device work producing ``tree`` is done (timing; no-op if eager)."""

    def peak_memory_mib(self) -> float | None:
        """Peak device memory of this process in MiB (``None`` where not measurable)."""

    def info(self) -> dict[str, str]:
        """Library versions, threads and accelerator, for benchmark result files."""


class NumpyBackend:
    """The pure-numpy reference backend: no framework, single process, no training."""

    name = "numpy"
    xp = array_api_compat.numpy

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
    return registered(ENTRY_POINT_GROUP, "backend")


def training_backend(name: str) -> TrainingBackend:
    """``load_backend(name)``, checked to be a ``TrainingBackend``.

    Raises:
        ConfigError: unknown name, framework not installed, or an array-only backend.
    """
    try:
        backend = load_backend(name)
    except (ValueError, ImportError, TypeError) as err:
        raise ConfigError(f"run.backend={name!r}: {err}") from err
    if not isinstance(backend, TrainingBackend):
        raise ConfigError(
            f"run.backend={name!r} is an array-only backend (it cannot train a model); "
            f"training backends: {', '.join(_training_names())}"
        )
    return backend


def _training_names() -> list[str]:
    names = []
    for name in available_backends():
        try:
            if isinstance(load_backend(name), TrainingBackend):
                names.append(name)
        except (ValueError, ImportError, TypeError):
            continue
    return names


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
