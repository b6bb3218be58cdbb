"""DoReMi: clipped excess loss against a reference model trained first (docs/methods.md, "DoReMi").

The reference w trains ``reference_steps`` on the uniform mixture from the proxy's
initialisation, then stays frozen; every ``update_every`` proxy steps the per-domain mean of the
per-token ``max(l_proxy - l_ref, 0)`` on the step's batch drives an exponentiated-gradient step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting import MISSING_POLICIES
from ..mixture import doremi
from ._record import EveryStep, Method, Signal, check_fields


@dataclass(frozen=True)
class DoReMiParams:
    """DoReMi's keys in ``[train]``."""

    eta_mixture: float = 1.0  # step size (1 in DoReMi)
    smoothing: float = 1e-3  # mix toward uniform after each step (1e-3 in DoReMi)
    missing: str = "carry"  # a domain absent from a batch: carry its last signal | zero
    update_every: int = 1  # a mixture update every N proxy steps
    reference_steps: int = 0  # the reference model's budget (0: train.steps)

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={"missing": MISSING_POLICIES},
            positive=("eta_mixture", "update_every"),
            nonnegative=("reference_steps",),
            below_one=("smoothing",),
        )


def _transform(p: DoReMiParams, *, sizes: Any = None, history: int = 0) -> Any:
    del sizes
    return doremi(p.eta_mixture, p.smoothing, p.missing, history=history)


METHOD = Method(
    name="doremi",
    signal=Signal.EXCESS_LOSS,
    params=DoReMiParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every, reference=True, reference_steps=p.reference_steps),
    summary="excess loss against a reference model trained first (Xie et al. 2023)",
)
