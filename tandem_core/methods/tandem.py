"""TANDEM: twin episodes and the penalised mixture update (docs/methods.md, "TANDEM").

Each episode syncs the reference w to the proxy u (parameters and optimizer state), trains both K
probe steps on the same batches (u on ``L_train``, w on ``L_val + gamma * L_train``), measures the
twin statistics and steps the mixture on ``gamma * Delta``, ``Delta_m = L^m(w) - L^m(u)``, then
trains u E free steps under the new mixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting import MISSING_POLICIES
from ..errors import ConfigError
from ..mixture import NORMALIZE, STEPS, tandem
from ..schedule import EPISODE_MEANINGS, Schedule
from ._record import Episodes, Method, Signal, check_fields


@dataclass(frozen=True)
class TandemParams:
    """TANDEM's keys in ``[train]``.

    The default takes exponentiated-gradient steps on Delta normalised by its running RMS: the twin
    difference is tiny and its scale drifts, so one ``eta_alpha`` works across models. The paper's
    update is ``alpha_step="pgd"``, ``normalize="none"``.
    """

    probe_steps: int = 5  # K
    free_steps: int = 20  # E; its meaning is set by `episode`
    episode: str = "free"  # "free": E free steps after the update; "total": E includes the K
    gamma: float = 1.0  # the reference's objective is L_val + gamma * L_train
    eta_alpha: float = 0.3  # mixture step size
    alpha_step: str = "eg"  # mixture update: eg (exponentiated gradient) | pgd
    normalize: str = "rms"  # scale of Delta before the step: rms | none
    floor: float = 0.0  # smallest weight of any domain (M * floor < 1)
    smoothing: float = 1e-3  # mix toward uniform after each step
    missing: str = "carry"  # a domain absent from a batch: carry its last signal | zero

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={
                "episode": EPISODE_MEANINGS,
                "alpha_step": STEPS,
                "normalize": NORMALIZE,
                "missing": MISSING_POLICIES,
            },
            positive=("probe_steps", "gamma", "eta_alpha"),
            nonnegative=("free_steps", "floor"),
            below_one=("smoothing",),
        )
        try:
            _ = self.schedule.length
        except ValueError as err:
            raise ConfigError(str(err)) from err

    @property
    def schedule(self) -> Schedule:
        """The episode layout."""
        return Schedule(self.probe_steps, self.free_steps, self.episode)


def _transform(p: TandemParams, *, sizes: Any = None, history: int = 0) -> Any:
    del sizes
    return tandem(
        p.eta_alpha,
        p.gamma,
        p.alpha_step,
        p.floor,
        p.smoothing,
        p.missing,
        normalize=p.normalize,
        history=history,
    )


METHOD = Method(
    name="tandem",
    signal=Signal.TWIN,
    params=TandemParams,
    transform=_transform,
    plan=lambda p: Episodes(p.schedule, p.gamma),
    summary="twin networks, penalised bi-level mixture update",
)
