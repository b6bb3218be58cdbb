"""Natural: the fixed size-proportional mixture ``alpha_m ∝ n_m`` (tokens per domain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..mixture import natural
from ._record import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class NaturalParams:
    """Its one key in ``[train]``: how often the fixed mixture is recorded."""

    update_every: int = 1  # record (count) the fixed mixture every N proxy steps

    def __post_init__(self) -> None:
        check_fields(self, positive=("update_every",))


def _transform(p: NaturalParams, *, sizes: Any = None, history: int = 0) -> Any:
    del p
    if sizes is None:
        raise ConfigError("method='natural' needs the domain sizes")
    return natural(sizes, history=history)


METHOD = Method(
    name="natural",
    signal=Signal.NONE,
    params=NaturalParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="the size-proportional mixture",
)
