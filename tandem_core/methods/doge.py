"""DoGE: per-domain gradient alignment with the validation gradient (docs/methods.md, "DoGE").

Every ``update_every`` proxy steps ``W_m = <grad L^m_train(u), grad L_val(u)>`` on the step's
batches drives an exponentiated-gradient step; the proxy then steps on ``sum_m alpha_m g_m``.
Needs per-domain sub-batches (``sampling="reweight"``) and no gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting import MISSING_POLICIES
from ..mixture import doge
from ._record import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class DoGEParams:
    """DoGE's keys in ``[train]``."""

    eta_mixture: float = 1.0  # step size
    smoothing: float = 1e-3  # mix toward uniform after each step
    missing: str = "carry"  # a domain absent from a batch: carry its last signal | zero
    update_every: int = 1  # a mixture update every N proxy steps

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={"missing": MISSING_POLICIES},
            positive=("eta_mixture", "update_every"),
            below_one=("smoothing",),
        )


def _transform(p: DoGEParams, *, sizes: Any = None, history: int = 0) -> Any:
    del sizes
    return doge(p.eta_mixture, p.smoothing, p.missing, history=history)


METHOD = Method(
    name="doge",
    signal=Signal.ALIGNMENT,
    params=DoGEParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="per-domain gradient alignment with the target gradient (Fan et al. 2024)",
)
