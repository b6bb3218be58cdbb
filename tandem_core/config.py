"""Training configuration shared by both backends' trainers, validated before any work starts."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from ._transform import MixtureTransform
from .accounting import MISSING_POLICIES
from .adapt import AdaptTransform, adapt
from .mixture import NORMALIZE, STEPS, doge, doremi, natural, tandem, temperature, uniform
from .schedule import EPISODE_MEANINGS, Schedule

__all__ = [
    "METHODS",
    "STATIC_METHODS",
    "WEIGHTINGS",
    "ConfigError",
    "TrainConfig",
    "check_weighting_method",
    "make_adapt",
    "make_transform",
]

METHODS = ("tandem", "doremi", "doge", "uniform", "natural", "temperature")
STATIC_METHODS = ("uniform", "natural", "temperature")  # fixed mixtures: ADAPT can run with them
WEIGHTINGS = ("none", "adapt", "bm25")
OPTIMIZERS = ("adamw", "sgd")
SAMPLING = ("reweight", "sample")
NONFINITE = ("skip", "zero", "raise")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range (names the key)."""


@dataclass(frozen=True)
class TrainConfig:
    """How a mixture is learned: method, episode schedule, optimisers, batch sizes, logging.

    Defaults work out of the box on the built-in synthetic suite (SPEC 1.4: the twin difference is
    tiny, so TANDEM's default normalises Delta by its running RMS and takes EG steps).

    Per-sample loss weighting (ADAPT, SPEC 2) is ``weighting`` with the ``adapt_*`` / ``bm25_*``
    keys; it runs with the static mixtures only (``check_weighting_method``). ``adapt_tau``
    defaults to 0.1 (DataFlex: 1.0, which confines the weights to [0.27, 0.73]; SPEC 2.3).
    """

    method: str = "tandem"
    steps: int = 600  # proxy optimizer steps (the budget)
    # TANDEM (SPEC 1.3-1.4)
    probe_steps: int = 5  # K
    free_steps: int = 20  # E; its meaning is set by `episode`
    episode: str = "free"  # "free": E free steps after the update; "total": E includes the K probes
    gamma: float = 1.0
    eta_alpha: float = 0.3
    alpha_step: str = "eg"
    normalize: str = "rms"
    floor: float = 0.0
    smoothing: float = 1e-3
    missing: str = "carry"
    # baselines
    eta_mixture: float = 1.0  # DoReMi / DoGE step size
    update_every: int = 1  # DoReMi / DoGE: mixture update every N proxy steps
    reference_steps: int | None = None  # DoReMi reference model budget (None: `steps`)
    temperature: float = 2.0
    # optimisation
    optimizer: str = "adamw"
    lr: float = 3e-3  # eta_u
    lr_reference: float | None = None  # eta_w (None: lr)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    grad_clip: float | None = 1.0
    # batches
    batch_per_domain: int = 16
    val_batch_size: int = 32
    eval_per_domain: int = 16
    sampling: str = "reweight"  # per-domain sub-batches weighted by alpha, or sample in proportion
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    # running
    log_every: int = 50
    eval_every: int = 0  # validation-set evaluation every N proxy steps (0: at the end only)
    eval_max_per_domain: int = 64
    seed: int = 0
    dtype: str = "float32"
    compile: bool = False
    fuse_twins: bool = False
    fsdp: bool = False  # torch, several processes: shard the twins (FSDP2) instead of DDP
    # a non-finite gradient: skip the step exactly (parameters and optimizer state kept; torch
    # keeps a backup of them), zero the gradient only (no backup; momentum and decay still
    # apply), or skip and stop at the next logging step
    nonfinite: str = "skip"  # skip | zero | raise
    debug: bool = False  # check the mixture invariants after every update (reads alpha: a sync)
    # per-sample loss weighting (ADAPT, SPEC 2): with static mixtures only (STATIC_METHODS)
    weighting: str = "none"  # none | adapt (model embeddings) | bm25 (static lexical scores)
    adapt_tau: float = 0.1  # gate temperature: w = sigmoid(s / max(tau, eps))
    adapt_refresh: int = 50  # R: proxy steps between anchor-centroid refreshes (adapt)
    adapt_clip: float | None = None  # optional cap on the weights
    adapt_center: float | None = None  # optional score offset before the gate (NOT in the paper)
    adapt_anchor: str = ""  # anchor set path, read by the adapters (empty: the validation set)
    adapt_anchor_max: int = 64  # anchor windows per anchor stream
    adapt_anchor_batch: int = 32  # rows per anchor forward (the last batch is padded)
    bm25_tau: float = 1.0  # gate temperature of the standardised BM25 scores
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    bm25_sample: int = 256  # training windows that estimate the BM25 standardisation

    def __post_init__(self) -> None:
        _check_types(self)
        for key, allowed in (
            ("method", METHODS),
            ("episode", EPISODE_MEANINGS),
            ("alpha_step", STEPS),
            ("normalize", NORMALIZE),
            ("missing", MISSING_POLICIES),
            ("optimizer", OPTIMIZERS),
            ("sampling", SAMPLING),
            ("nonfinite", NONFINITE),
            ("dtype", DTYPES),
            ("weighting", WEIGHTINGS),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        positive = ("steps", "probe_steps", "gamma", "eta_alpha", "eta_mixture", "update_every")
        positive += ("temperature", "lr", "eps", "batch_per_domain", "val_batch_size")
        positive += ("eval_per_domain", "log_every", "eval_max_per_domain", "accumulate")
        positive += ("adapt_refresh", "adapt_anchor_max", "adapt_anchor_batch", "bm25_sample")
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("free_steps", "weight_decay", "momentum", "floor", "smoothing", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("lr_reference", "grad_clip", "reference_steps", "adapt_clip"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"{key} must be > 0 (or unset), got {value}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError(f"beta1, beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        for key in ("batch_per_domain", "val_batch_size", "eval_per_domain"):
            if getattr(self, key) % self.accumulate:
                raise ConfigError(
                    f"{key}={getattr(self, key)} must be a multiple of "
                    f"accumulate={self.accumulate} (micro-batches of equal size)"
                )
        if self.smoothing >= 1:
            raise ConfigError(f"smoothing must be < 1, got {self.smoothing}")
        _check_weighting(self)
        try:
            _ = self.schedule.length
        except ValueError as err:
            raise ConfigError(str(err)) from err

    @property
    def schedule(self) -> Schedule:
        """The TANDEM episode schedule."""
        return Schedule(self.probe_steps, self.free_steps, self.episode)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (TOML table), rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown training key(s) {unknown}; known keys: {sorted(names)}")
        return cls(**values)

    def to_mapping(self) -> dict[str, Any]:
        """Plain dict of every field (for config.toml); ``None`` values are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _check_types(cfg: TrainConfig) -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        allowed = tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)
        if value is None and type(None) in typing.get_args(hint):
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            continue  # an int is a fine float
        if isinstance(value, bool) and bool not in allowed:
            raise ConfigError(f"{f.name} must be {_names(allowed)}, got a bool ({value})")
        if not isinstance(value, allowed):
            raise ConfigError(
                f"{f.name} must be {_names(allowed)}, got {type(value).__name__} {value!r}"
            )


def _check_weighting(cfg: TrainConfig) -> None:
    finite = ("adapt_tau", "bm25_tau", "bm25_k1", "bm25_b")
    for key in finite:
        if not 0 <= getattr(cfg, key) < float("inf"):  # also rejects NaN
            raise ConfigError(f"{key} must be finite and >= 0, got {getattr(cfg, key)}")
    if cfg.bm25_b > 1:
        raise ConfigError(f"bm25_b must be in [0, 1], got {cfg.bm25_b}")
    if cfg.adapt_center is not None and not abs(cfg.adapt_center) < float("inf"):
        raise ConfigError(f"adapt_center must be finite (or unset), got {cfg.adapt_center}")


def check_weighting_method(cfg: TrainConfig) -> None:
    """Per-sample weighting runs only with a static mixture (raises ``ConfigError`` otherwise).

    ADAPT reweights samples inside ONE model's training loop; the learned-mixture methods
    (TANDEM's twin probes, DoReMi's excess loss, DoGE's alignment) measure per-domain signals on
    unweighted losses, and mixing the two would change what they measure. Checked when a run is
    built (``MixtureRun``), not in ``TrainConfig``, so a job that replaces the method (``tandem
    train`` uses ``natural``) can load a config with ``weighting`` set.
    """
    if cfg.weighting != "none" and cfg.method not in STATIC_METHODS:
        raise ConfigError(
            f"weighting={cfg.weighting!r} reweights samples in training with a fixed mixture: "
            f"use it with method in {STATIC_METHODS} (e.g. `tandem train --weighting "
            f"{cfg.weighting}`), not with method={cfg.method!r}"
        )


def make_adapt(cfg: TrainConfig) -> AdaptTransform:
    """The ADAPT transform (anchor centroid and gate) a configuration asks for.

    For ``weighting="bm25"`` only its gate is used, with ``bm25_tau`` (the scores, standardised
    on the host, have unit spread where cosines have a small one).
    """
    tau = cfg.bm25_tau if cfg.weighting == "bm25" else cfg.adapt_tau
    return adapt(tau, cfg.adapt_refresh, cfg.adapt_clip, center=cfg.adapt_center)


def _names(types: tuple) -> str:
    return " or ".join(t.__name__ for t in types)


def make_transform(
    cfg: TrainConfig, domain_sizes: list[int] | None = None, *, history: int = 0
) -> MixtureTransform:
    """The ``MixtureTransform`` a configuration asks for.

    Args:
        cfg: the training configuration.
        domain_sizes: tokens per domain, required by ``natural`` and ``temperature``.
        history: mixtures kept on device in the state.

    Returns:
        A ``MixtureTransform``.
    """
    if cfg.method == "tandem":
        return tandem(
            cfg.eta_alpha,
            cfg.gamma,
            cfg.alpha_step,
            cfg.floor,
            cfg.smoothing,
            cfg.missing,
            normalize=cfg.normalize,
            history=history,
        )
    if cfg.method in ("doremi", "doge"):
        factory = doremi if cfg.method == "doremi" else doge
        return factory(cfg.eta_mixture, max(cfg.smoothing, 0.0), cfg.missing, history=history)
    if cfg.method == "uniform":
        return uniform(history=history)
    if domain_sizes is None:
        raise ConfigError(f"method={cfg.method!r} needs the domain sizes")
    if cfg.method == "natural":
        return natural(domain_sizes, history=history)
    return temperature(domain_sizes, cfg.temperature, history=history)
