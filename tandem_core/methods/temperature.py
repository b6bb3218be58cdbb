"""Temperature: the fixed mixture ``alpha_m ∝ n_m ** (1 / t)`` (t = 1 natural, t → inf uniform)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..mixture import temperature
from ._record import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class TemperatureParams:
    """Temperature's key in ``[train]``."""

    temperature: float = 2.0  # t in alpha_m ∝ n_m ** (1 / t)
    update_every: int = 1  # record (count) the fixed mixture every N proxy steps

    def __post_init__(self) -> None:
        check_fields(self, positive=("temperature", "update_every"))


def _transform(p: TemperatureParams, *, sizes: Any = None, history: int = 0) -> Any:
    if sizes is None:
        raise ConfigError("method='temperature' needs the domain sizes")
    return temperature(sizes, p.temperature, history=history)


METHOD = Method(
    name="temperature",
    signal=Signal.NONE,
    params=TemperatureParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="size-proportional mixture at a temperature",
)
