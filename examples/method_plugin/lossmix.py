"""A mixing method in one file: ``lossmix``, more weight to the domains the proxy finds hardest.

This file is the whole method (docs/architecture.md, "How to add a method"). It reads a signal
every backend already measures (``Signal.PROXY_LOSSES``: the proxy's mean loss per domain on the
step's batch) and steps the mixture with exponentiated gradient on it, smoothed toward uniform,
in the spirit of online loss-driven mixing (Albalak et al. 2023, "Efficient Online Data Mixing").

Register it through the entry-point group the built-in methods use, in your package's
``pyproject.toml``::

    [project.entry-points."tandem.methods"]
    lossmix = "lossmix:METHOD"

then ``tandem optimize --set train.method=lossmix --set train.eta=0.5`` or, from Python,
``TrainConfig.from_mapping({"method": "lossmix"})`` find it like any built-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tandem_core as tc
from tandem_core.methods import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class LossMixParams:
    """The method's keys in ``[train]`` (validated: errors name the key)."""

    eta: float = 0.5  # step size of the exponentiated-gradient update
    smoothing: float = 1e-2  # mix toward uniform after each step
    update_every: int = 1  # a mixture update every N proxy steps

    def __post_init__(self) -> None:
        check_fields(self, positive=("eta", "update_every"), below_one=("smoothing",))


def _higher_loss_gains(stats: Any, *, xp: Any, like: Any) -> tuple:
    """Descent gradient ``-mean loss`` per domain (a higher loss gains weight) and presence."""
    del xp, like
    means, present = tc.domain_means(stats)
    return -means, present


def _transform(p: LossMixParams, *, sizes: Any = None, history: int = 0) -> tc.MixtureTransform:
    del sizes
    stages = tc.chain(tc.exponentiated_gradient(p.eta), tc.smoothing(p.smoothing))
    return tc.mixture_transform(_higher_loss_gains, stages, history=history)


METHOD = Method(
    name="lossmix",
    signal=Signal.PROXY_LOSSES,
    params=LossMixParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="exponentiated-gradient steps toward the domains with the highest proxy loss",
)
