"""Uniform: the fixed mixture ``1/M`` (the baseline every learned mixture must beat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..mixture import uniform
from ._record import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class UniformParams:
    """Its one key in ``[train]``: how often the fixed mixture is recorded."""

    update_every: int = 1  # record (count) the fixed mixture every N proxy steps

    def __post_init__(self) -> None:
        check_fields(self, positive=("update_every",))


def _transform(p: UniformParams, *, sizes: Any = None, history: int = 0) -> Any:
    del p, sizes
    return uniform(history=history)


METHOD = Method(
    name="uniform",
    signal=Signal.NONE,
    params=UniformParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="the uniform mixture 1/M",
)
