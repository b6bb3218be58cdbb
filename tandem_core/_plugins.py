"""Entry-point discovery shared by the backend and method registries (lazy and cached)."""

from __future__ import annotations

import importlib.metadata
import warnings

__all__ = ["registered"]


def registered(group: str, kind: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The entry points of ``group`` by name; a name registered twice warns and keeps the first.

    Args:
        group: the entry-point group, e.g. ``"tandem.methods"``.
        kind: what the group registers, for the warning (``"method"``, ``"backend"``).
    """
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"{kind} {ep.name!r} registered twice ({found[ep.name].value} and {ep.value}); "
                "using the first",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        found.setdefault(ep.name, ep)
    return found
