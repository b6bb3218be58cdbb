"""Mixing methods: one record per file, found by name in the entry-point group ``tandem.methods``.

Built-ins register there too, the way a third party does::

    [project.entry-points."tandem.methods"]
    lossmix = "my_package.lossmix:METHOD"   # a tandem_core.methods.Method

Discovery is lazy and cached (xarray's way); ``refresh_methods()`` re-reads the entry points.
"""

from __future__ import annotations

import functools
import importlib.metadata
import warnings

from .._plugins import registered
from ..errors import ConfigError
from ._record import Episodes as Episodes
from ._record import EveryStep as EveryStep
from ._record import Method as Method
from ._record import Plan as Plan
from ._record import Signal as Signal
from ._record import check_fields as check_fields
from ._record import check_types as check_types
from ._record import planned_updates as planned_updates

__all__ = [
    "ENTRY_POINT_GROUP",
    "Episodes",
    "EveryStep",
    "Method",
    "Plan",
    "Signal",
    "all_methods",
    "available_methods",
    "check_fields",
    "check_types",
    "get_method",
    "planned_updates",
    "refresh_methods",
]

ENTRY_POINT_GROUP = "tandem.methods"


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return registered(ENTRY_POINT_GROUP, "method")


def available_methods() -> list[str]:
    """Names of the registered methods, sorted (loading each is left to ``get_method``)."""
    return sorted(_entry_points())


@functools.cache
def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ConfigError: no method of that name is registered (the message lists them), or its
            entry point does not load a ``Method`` named ``name``.
    """
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(
            f"unknown method {name!r}; registered methods: {', '.join(available_methods())}"
        )
    try:
        record = eps[name].load()
    except Exception as err:  # noqa: BLE001 - a broken plugin is named, not a traceback
        raise ConfigError(f"method {name!r} ({eps[name].value}) failed to load: {err}") from err
    if not isinstance(record, Method) or record.name != name:
        raise ConfigError(
            f"entry point {name!r} ({eps[name].value}) must be a tandem_core.methods.Method "
            f"named {name!r}, got {record!r:.80}"
        )
    return record


def all_methods() -> list[Method]:
    """Every registered method that loads; one that does not becomes a ``RuntimeWarning``."""
    out = []
    for name in available_methods():
        try:
            out.append(get_method(name))
        except ConfigError as err:
            warnings.warn(str(err), RuntimeWarning, stacklevel=2)
    return out


def refresh_methods() -> None:
    """Forget the cached entry points and records (after installing a plugin in-process)."""
    _entry_points.cache_clear()
    get_method.cache_clear()
