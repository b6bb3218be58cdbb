"""The ``[train]`` table: how a mixture is learned, checked before any work starts.

``TrainConfig`` holds what every method shares (budget, optimizer, batches, logging, precision,
faults); the method's own hyper-parameters are its ``Method.params`` dataclass in ``params``, and
the per-sample weighting (ADAPT) keys are ``AdaptConfig`` in ``adapt``. In TOML all of them are
flat keys of ``[train]``: ``TrainConfig.from_mapping`` routes each key to its owner and an error
names a key that belongs to another method than ``train.method``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..methods import Method, all_methods, check_fields, get_method
from .weighting import AdaptConfig

__all__ = ["TrainConfig"]

OPTIMIZERS = ("adamw", "sgd")
SAMPLING = ("reweight", "sample")
NONFINITE = ("skip", "zero", "raise")
DTYPES = ("float32", "float64")
WEIGHTINGS = ("none", "adapt", "bm25")
POSITIVE = ("steps", "lr", "eps", "batch_per_domain", "val_batch_size", "eval_per_domain")
POSITIVE += ("log_every", "eval_max_per_domain", "accumulate", "lr_reference", "grad_clip")


@dataclass(frozen=True)
class TrainConfig:
    """How a mixture is learned: method, budget, optimisers, batch sizes, logging, faults.

    Build it from flat ``[train]`` keys with ``TrainConfig.from_mapping`` (the method's and
    ADAPT's keys included); ``params`` ``None`` means the method's defaults.
    """

    method: str = "tandem"  # the mixing method (the other methods are named above)
    params: Any = None  # the method's hyper-parameters (its Method.params dataclass)
    steps: int = 600  # proxy optimizer steps (the budget)
    # optimisation
    optimizer: str = "adamw"  # the proxy's optimizer: adamw | sgd
    lr: float = 3e-3  # eta_u
    lr_reference: float | None = None  # eta_w, the reference model's (None: lr)
    weight_decay: float = 0.0  # decoupled weight decay of the optimizer
    beta1: float = 0.9  # (adamw) first-moment decay
    beta2: float = 0.999  # (adamw) second-moment decay
    eps: float = 1e-8  # (adamw) denominator epsilon
    momentum: float = 0.0  # (sgd) momentum
    grad_clip: float | None = 1.0  # global gradient-norm clip (unset: no clipping)
    # batches
    batch_per_domain: int = 16  # training rows per domain per proxy step
    val_batch_size: int = 32  # validation rows per step of the reference objective
    eval_per_domain: int = 16  # validation rows per domain per measurement
    sampling: str = "reweight"  # per-domain sub-batches weighted by alpha, or sample in proportion
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    # running
    log_every: int = 50  # proxy steps between metrics rows (metrics.jsonl, trackers)
    eval_every: int = 0  # validation-set evaluation every N proxy steps (0: at the end only)
    eval_max_per_domain: int = 64  # validation windows per domain in an evaluation
    seed: int = 0  # the run's batch order (data.seed: the data itself; model.seed: its init)
    dtype: str = "float32"  # parameter dtype: float32 | float64
    # a non-finite gradient: skip the step exactly (parameters and optimizer state kept; torch
    # keeps a backup of them), zero the gradient only (no backup; momentum and decay still
    # apply), or skip and stop at the next logging step
    nonfinite: str = "skip"  # skip | zero | raise
    debug: bool = False  # check the mixture invariants after every update (reads alpha: a sync)
    # per-sample loss weighting (ADAPT): with fixed mixtures only (signal "none")
    weighting: str = "none"  # none | adapt (model embeddings) | bm25 (static lexical scores)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ConfigError(f"method must be a str, got {type(self.method).__name__}")
        method = get_method(self.method)
        if self.params is None:
            object.__setattr__(self, "params", method.make_params())
        elif not isinstance(self.params, method.params):
            raise ConfigError(
                f"params is a {type(self.params).__name__}, method {self.method!r} takes "
                f"{method.params.__name__}"
            )
        check_fields(
            self,
            choices={
                "optimizer": OPTIMIZERS,
                "sampling": SAMPLING,
                "nonfinite": NONFINITE,
                "dtype": DTYPES,
                "weighting": WEIGHTINGS,
            },
            positive=POSITIVE,
            nonnegative=("weight_decay", "momentum", "eval_every"),
            below_one=("beta1", "beta2"),
        )
        for key in ("batch_per_domain", "val_batch_size", "eval_per_domain"):
            if getattr(self, key) % self.accumulate:
                raise ConfigError(
                    f"{key}={getattr(self, key)} must be a multiple of "
                    f"accumulate={self.accumulate} (micro-batches of equal size)"
                )

    @property
    def method_record(self) -> Method:
        """The registered ``Method`` named by ``method``."""
        return get_method(self.method)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from flat ``[train]`` keys, routing the method's and ADAPT's keys to them.

        Raises:
            ConfigError: an unknown key, a key of another method than ``method``, or a bad value
                (the message names the key).
        """
        values = dict(values)
        method = get_method(values.get("method", cls.method))
        own = {f.name for f in dataclasses.fields(cls)} - {"params", "adapt"}
        adapt_keys = {f.name for f in dataclasses.fields(AdaptConfig)}
        train = {k: v for k, v in values.items() if k in own}
        params = {k: v for k, v in values.items() if k in method.keys}
        adapt = {k: v for k, v in values.items() if k in adapt_keys}
        rest = sorted(set(values) - set(train) - set(params) - set(adapt))
        if rest:
            _refuse(rest, method, sorted(own | adapt_keys | set(method.keys)))
        return cls(**train, params=method.make_params(params), adapt=AdaptConfig(**adapt))

    def to_mapping(self) -> dict[str, Any]:
        """Flat ``[train]`` keys (for config.toml); ``None`` values are left out."""
        out = {k: getattr(self, k) for k in (f.name for f in dataclasses.fields(self))}
        out.pop("params"), out.pop("adapt")
        out.update(dataclasses.asdict(self.params))
        out.update(dataclasses.asdict(self.adapt))
        return {k: v for k, v in out.items() if v is not None}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat keys changed; a new ``method`` drops the old method's keys."""
        mapping = self.to_mapping()
        if changes.get("method", self.method) != self.method:
            for key in self.method_record.keys:
                mapping.pop(key, None)
        mapping.update(changes)
        return TrainConfig.from_mapping(mapping)


def _refuse(keys: list[str], method: Method, known: list[str]) -> None:
    owners = {m.name: set(m.keys) for m in all_methods() if m.name != method.name}
    for key in keys:
        mine = sorted(name for name, ks in owners.items() if key in ks)
        if mine:
            raise ConfigError(
                f"{key} is a key of method(s) {mine}, not of method={method.name!r} "
                f"(its keys: {list(method.keys)})"
            )
    raise ConfigError(f"unknown training key(s) {keys}; known keys: {known}")
