"""DoGE: per-domain gradient alignment with the validation gradient (docs/methods.md, "DoGE").

Every ``update_every`` proxy steps the alignment ``<grad L^m_train(u), grad L_val(u)>`` on the
step's batches drives an exponentiated-gradient step; the proxy then steps on
``sum_m alpha_m g_m``. By default the scores are normalised as the reference code does
(``normalize="reference"``: clipped gradients, divided by the mean gradient norm, clipped to
``[0, score_clip]``, the step ``lr / mu``); ``normalize="none"`` is the raw alignment. Needs
per-domain sub-batches (``sampling="reweight"``) and no gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting import MISSING_POLICIES
from ..errors import ConfigError
from ..mixture import DOGE_NORMALIZE, doge
from ._record import EveryStep, Method, Signal, check_fields

# the reference code's smoothing (reweight_eps = 0) and this form's former default
SMOOTHING = {"reference": 0.0, "none": 1e-3}


@dataclass(frozen=True)
class DoGEParams:
    """DoGE's keys in ``[train]``."""

    eta_mixture: float = 1.0  # step size (normalize="reference": times lr / mu)
    smoothing: float | None = None  # mix toward uniform per step (unset: 0; normalize=none: 1e-3)
    missing: str = "carry"  # a domain absent from a batch: carry its last signal | zero
    update_every: int = 1  # a mixture update every N proxy steps
    normalize: str = "reference"  # reference: the reference code's scores | none: raw alignment
    mu: float = 0.01  # (reference) the step is eta_mixture * lr / mu (config/doge.json: 0.01)
    score_clip: float = 5.0  # (reference) normalised scores clipped to [0, score_clip] (dw_max)
    domain_clip: float | None = 5.0  # (reference) gradient norm clip in the scores (unset: none)

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={"missing": MISSING_POLICIES, "normalize": DOGE_NORMALIZE},
            positive=("eta_mixture", "update_every", "mu", "score_clip", "domain_clip"),
            below_one=("smoothing",),
        )


def _transform(
    p: DoGEParams, *, sizes: Any = None, history: int = 0, lr: float | None = None
) -> Any:
    del sizes
    smoothing = SMOOTHING[p.normalize] if p.smoothing is None else p.smoothing
    if p.normalize == "none":
        return doge(p.eta_mixture, smoothing, p.missing, normalize="none", history=history)
    if lr is None:
        raise ConfigError(
            "doge with normalize='reference' steps by the proxy's learning rate: build it with "
            "Method.build(params, ..., lr=train.lr)"
        )
    return doge(
        p.eta_mixture * lr / p.mu,
        smoothing,
        p.missing,
        normalize="reference",
        score_clip=p.score_clip,
        domain_clip=p.domain_clip,
        history=history,
    )


METHOD = Method(
    name="doge",
    signal=Signal.ALIGNMENT,
    params=DoGEParams,
    transform=_transform,
    plan=lambda p: EveryStep(p.update_every),
    summary="per-domain gradient alignment with the target gradient (Fan et al. 2024)",
)
