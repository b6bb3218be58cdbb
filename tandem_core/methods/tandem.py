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
from ..schedule import EPISODE_MEANINGS, Schedule, budget_step_size
from ._record import Episodes, Method, Signal, check_fields

ETA_RULES = ("constant", "budget")
AVERAGES = ("all", "tail")


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
    eta_alpha: float = 1.0  # mixture step size (eta_rule="budget": its scale c)
    eta_rule: str = "constant"  # constant | budget: eta_alpha * sqrt(ln M / T), T the run's updates
    average: str = "tail"  # the output averages: tail (the second half of the updates) | all
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
                "eta_rule": ETA_RULES,
                "average": AVERAGES,
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


def _transform(
    p: TandemParams,
    *,
    sizes: Any = None,
    history: int = 0,
    num_domains: int | None = None,
    updates: int | None = None,
) -> Any:
    del sizes
    if (p.eta_rule == "budget" or p.average == "tail") and (num_domains is None or updates is None):
        raise ConfigError(
            f"tandem with eta_rule={p.eta_rule!r}, average={p.average!r} needs the run's "
            "num_domains and updates (MixtureRun and TandemTrainer pass them): give both, or "
            "eta_rule='constant' and average='all'"
        )
    eta = p.eta_alpha
    if p.eta_rule == "budget":
        eta = budget_step_size(p.eta_alpha, num_domains, updates)
    return tandem(
        eta,
        p.gamma,
        p.alpha_step,
        p.floor,
        p.smoothing,
        p.missing,
        normalize=p.normalize,
        history=history,
        average_from=updates // 2 if p.average == "tail" else 0,
    )


METHOD = Method(
    name="tandem",
    signal=Signal.TWIN,
    params=TandemParams,
    transform=_transform,
    plan=lambda p: Episodes(p.schedule, p.gamma),
    summary="twin networks, penalised bi-level mixture update",
)
