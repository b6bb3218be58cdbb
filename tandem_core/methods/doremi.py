"""DoReMi: clipped excess loss against a reference model trained first (docs/methods.md, "DoReMi").

The reference w trains ``reference_steps`` on the reference mixture (``reference_mixture``: the
natural, token-proportional one by default, as DoReMi's Pile runs) from the proxy's
initialisation, then stays frozen; every ``update_every`` proxy steps the per-domain mean of the
per-token ``max(l_proxy - l_ref, 0)`` on the step's batch drives an exponentiated-gradient step.
With ``rounds > 1`` (iterated DoReMi) each round starts afresh and its reference trains on the
previous round's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting import MISSING_POLICIES
from ..errors import ConfigError
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
    reference_mixture: str = "natural"  # natural | uniform | mixture.json / JSON weights path
    rounds: int = 1  # iterated DoReMi: round r + 1's reference trains on round r's output

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={"missing": MISSING_POLICIES},
            positive=("eta_mixture", "update_every", "rounds"),
            nonnegative=("reference_steps",),
            below_one=("smoothing",),
        )
        if not self.reference_mixture.strip():
            raise ConfigError(
                "reference_mixture must be 'natural', 'uniform' or the path of a weights file"
            )


def _transform(p: DoReMiParams, *, sizes: Any = None, history: int = 0) -> Any:
    del sizes
    return doremi(p.eta_mixture, p.smoothing, p.missing, history=history)


METHOD = Method(
    name="doremi",
    signal=Signal.EXCESS_LOSS,
    params=DoReMiParams,
    transform=_transform,
    plan=lambda p: EveryStep(
        p.update_every,
        reference=True,
        reference_steps=p.reference_steps,
        reference_mixture=p.reference_mixture,
        rounds=p.rounds,
    ),
    summary="excess loss against a reference model trained first (Xie et al. 2023)",
)
