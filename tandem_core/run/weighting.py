"""Per-sample weighting inside ``MixtureRun`` (ADAPT and ADAPT-BM25, docs/methods.md "ADAPT").

``SampleWeighting`` owns what the run loop needs beyond the engine's weighted step: the fixed anchor
batches, the refresh schedule of the anchor centroid (every ``R`` proxy steps, step 0 included), the
ADAPT-BM25 index and its standardisation, and the weight / score statistics kept on device until a
logging step. The engine measures the ``sample_scores`` signal (``weighted_step``,
``anchor_refresh``) and does the device work; ``AdaptConfig`` holds the keys in ``[train]``.

Design choices (the paper leaves them open):

- Objective. With a fixed mixture alpha the weights enter the per-domain sums:
  ``L = sum_m alpha_m * sum_{i in m} w_i l_i / N_m`` with ``N_m`` the WHOLE batch's count of
  domain m (``tc.weighted_objective``), so micro-batches and ranks still add up to one big batch.
  For uniform alpha and equal counts this is ADAPT's ``sum_i w_i l_i / B`` (``Z = B``); with
  ``sampling="sample"`` (alpha is None) it is exactly that.
- ADAPT-BM25 is host-side: the anchors are the BM25 collection (``query="train"``), so the index is
  one weight per vocabulary term (``bm25_term_weights``) and a row's score is a gather and a sum
  over its valid input tokens. Scores are standardised with a mean and standard deviation
  estimated ONCE, before the first step, from ``bm25_sample`` windows of the sampler's ``eval``
  stream (uniform over domains; static mixtures never read that stream otherwise, so the training
  batches stay those of an unweighted run). They reach the step as a ``score`` column of the batch.
- Statistics for logging are this process's rows (a torch DDP rank logs its own rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._utils import Array, to_numpy
from ..accounting import DomainStats, merge_stats
from ..adapt import (
    AdaptState,
    AdaptTransform,
    WeightedStepInfo,
    adapt,
    bm25_term_weights,
    input_mask,
    merge_step_info,
    weight_summary,
)
from ..data import IGNORE_INDEX, Batch, check_batch
from ..errors import ConfigError
from ..methods import Signal, check_fields

__all__ = ["AdaptConfig", "SampleWeighting", "anchor_batches", "check_weighting"]

LEVELS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class AdaptConfig:
    """Per-sample weighting keys in ``[train]`` (``train.weighting`` = ``adapt`` or ``bm25``).

    ``adapt_tau`` defaults to 0.1 (DataFlex: 1.0, which confines the weights to [0.27, 0.73]).
    """

    adapt_tau: float = 0.1  # gate temperature: w = sigmoid(s / max(tau, eps))
    adapt_refresh: int = 50  # R: proxy steps between anchor-centroid refreshes (adapt)
    adapt_clip: float | None = None  # optional cap on the weights
    adapt_center: float | None = None  # optional score offset before the gate (NOT in the paper)
    adapt_anchor: str = ""  # anchor set path, read by the adapters (empty: the validation set)
    adapt_anchor_max: int = 64  # anchor windows per anchor stream
    adapt_anchor_batch: int = 32  # rows per anchor forward (the last batch is padded)
    bm25_tau: float = 1.0  # gate temperature of the standardised BM25 scores
    bm25_k1: float = 1.5  # BM25 term-frequency saturation k1
    bm25_b: float = 0.75  # BM25 length normalisation b
    bm25_sample: int = 256  # training windows that estimate the BM25 standardisation

    def __post_init__(self) -> None:
        check_fields(
            self,
            positive=("adapt_refresh", "adapt_anchor_max", "adapt_anchor_batch", "bm25_sample"),
            nonnegative=("adapt_tau", "bm25_tau", "bm25_k1", "bm25_b"),
        )
        check_fields(self, positive=("adapt_clip",))
        if self.bm25_b > 1:
            raise ConfigError(f"bm25_b must be in [0, 1], got {self.bm25_b}")
        if self.adapt_center is not None and not abs(self.adapt_center) < math.inf:
            raise ConfigError(f"adapt_center must be finite (or unset), got {self.adapt_center}")

    def transform(self, kind: str) -> AdaptTransform:
        """The ADAPT transform (anchor centroid and gate) for ``kind`` ``adapt`` or ``bm25``.

        For ``bm25`` only its gate is used, with ``bm25_tau`` (the scores, standardised on the
        host, have unit spread where cosines have a small one).
        """
        tau = self.bm25_tau if kind == "bm25" else self.adapt_tau
        return adapt(tau, self.adapt_refresh, self.adapt_clip, center=self.adapt_center)


def check_weighting(cfg: Any) -> None:
    """Per-sample weighting runs only with a fixed mixture (raises ``ConfigError`` otherwise).

    ADAPT reweights samples inside ONE model's training loop; the learned-mixture methods measure
    per-domain signals on unweighted losses, and mixing the two would change what they measure.
    Checked when a run is built, not in ``TrainConfig``, so a job that replaces the method
    (``tandem train`` uses ``natural``) can load a config with ``weighting`` set.
    """
    if cfg.weighting != "none" and cfg.method_record.signal is not Signal.NONE:
        raise ConfigError(
            f"weighting={cfg.weighting!r} reweights samples in training with a fixed mixture: "
            f"use it with a fixed-mixture method (signal 'none', e.g. uniform or natural; "
            f"`tandem train --weighting {cfg.weighting}`), not with method={cfg.method!r}"
        )


def anchor_batches(batches: list[Batch], size: int, *, vocab_size: int | None = None) -> list:
    """Anchor rows re-cut into batches of exactly ``size`` rows (the last padded with ignored rows).

    One shape for every anchor forward, so a jitted forward compiles once and a sharded one
    divides evenly; padded rows have no valid token and are left out of the centroid.
    """
    rows = [check_batch(b, vocab_size=vocab_size) for b in batches]
    if not rows:
        raise ConfigError("the anchor set is empty: give anchor data or validation data")
    tokens = np.concatenate([r["tokens"] for r in rows])
    labels = np.concatenate([r["labels"] for r in rows])
    keep = (labels != IGNORE_INDEX).any(-1)
    tokens, labels = tokens[keep], labels[keep]
    if not len(tokens):
        raise ConfigError("the anchor set has no scored token")
    out = []
    for s in range(0, len(tokens), size):
        pad = size - len(tokens[s : s + size])
        out.append(
            {
                "tokens": np.pad(tokens[s : s + size], ((0, pad), (0, 0))),
                "labels": np.pad(
                    labels[s : s + size], ((0, pad), (0, 0)), constant_values=IGNORE_INDEX
                ),
                "domain": np.zeros(size, dtype=np.int32),
            }
        )
    return out


class SampleWeighting:
    """ADAPT / ADAPT-BM25 hooks of ``MixtureRun`` (see the module docstring).

    Args:
        config: the training configuration (``weighting`` is ``"adapt"`` or ``"bm25"``).
        sampler: the run's sampler (default anchors: its validation sets; BM25 statistics: its
            ``eval`` stream).
        anchors: anchor batches (``tokens``, ``labels``; any row counts); default
            ``sampler.validation_sets(config.adapt.adapt_anchor_max)``.
        transform: a custom ``AdaptTransform`` (default from ``config.adapt``).
        vocab_size: token ids of the anchors must be below it.
    """

    def __init__(
        self,
        config: Any,
        sampler: Any,
        anchors: list[Batch] | None = None,
        *,
        transform: AdaptTransform | None = None,
        vocab_size: int | None = None,
    ) -> None:
        check_weighting(config)
        if config.weighting not in ("adapt", "bm25"):
            raise ConfigError(f"weighting={config.weighting!r}: nothing to weight")
        self.config, self.sampler, self.kind = config, sampler, config.weighting
        self.transform = transform or config.adapt.transform(config.weighting)
        if anchors is None:
            anchors = sampler.validation_sets(config.adapt.adapt_anchor_max)
        self.anchors = anchor_batches(
            anchors, config.adapt.adapt_anchor_batch, vocab_size=vocab_size
        )
        self.vocab_size = vocab_size or sampler.vocab_size
        self.state: AdaptState | None = None  # on device, after the first refresh
        self.last_refresh = -1  # host copy of the refresh step: no device read to schedule
        self.refreshes = 0
        self._pending: list[WeightedStepInfo] = []  # since the last logging step
        self._total: DomainStats | None = None  # whole run, per domain
        self._terms: np.ndarray | None = None  # BM25 weight per vocabulary term (V,)
        self.bm25_stats: tuple[float, float] | None = None  # (mean, std) of raw BM25 scores

    # ---------------------------------------------------------------- steps
    def step(self, engine: Any, train: Batch, alpha: Array | None, step: int) -> DomainStats:
        """Refresh the anchor centroid when due, then one weighted step of the proxy."""
        if self.kind == "adapt":
            if self.transform.needs_refresh(step) and step != self.last_refresh:
                self.state = engine.anchor_refresh(self.transform, self.state, self.anchors, step)
                self.last_refresh, self.refreshes = step, self.refreshes + 1
        else:
            train = {**train, "score": self.bm25(train)}
        stats, info = engine.weighted_step(train, alpha, self.transform, self.state)
        self._pending.append(info)
        self._total = (
            info.per_domain if self._total is None else merge_stats(self._total, info.per_domain)
        )
        return stats

    def bm25(self, batch: Batch) -> np.ndarray:
        """Standardised ADAPT-BM25 scores of a host batch: ``(B,)`` in the training dtype."""
        if self._terms is None:
            docs = []
            for b in self.anchors:
                mask = to_numpy(input_mask(b["labels"]))
                docs += [row[m] for row, m in zip(b["tokens"], mask) if m.any()]
            cfg = self.config.adapt
            self._terms = bm25_term_weights(docs, self.vocab_size, k1=cfg.bm25_k1, b=cfg.bm25_b)
        if self.bm25_stats is None:
            per = math.ceil(self.config.adapt.bm25_sample / len(self.sampler.domains))
            raw = self._raw_bm25(self.sampler.eval_batch(per))
            std = float(raw.std())
            self.bm25_stats = (float(raw.mean()), std if std > 0 else 1.0)
        mean, std = self.bm25_stats
        return ((self._raw_bm25(batch) - mean) / std).astype(self.config.dtype)

    def _raw_bm25(self, batch: Batch) -> np.ndarray:
        tokens, labels = np.asarray(batch["tokens"]), np.asarray(batch["labels"])
        mask = to_numpy(input_mask(labels))
        return np.where(mask, self._terms[np.clip(tokens, 0, len(self._terms) - 1)], 0.0).sum(-1)

    # ---------------------------------------------------------------- logging
    def log_row(self, domains: tuple[str, ...]) -> dict:
        """Weight and score distributions since the last call (reads the device: a sync)."""
        row: dict[str, Any] = {"weighting": self.kind}
        if self.kind == "adapt":
            row["anchor_refreshes"] = self.refreshes
        info = self._merged()
        self._pending = []
        if info is None:
            return row
        row["weights"] = _distribution(to_numpy(info.weights))
        row["scores"] = _distribution(to_numpy(info.scores))
        row["weight_by_domain"] = _by_domain(info.per_domain, domains)
        return row

    def summary(self, domains: tuple[str, ...]) -> dict:
        """Whole-run summary: mean weight ("effective data ratio") overall and per domain."""
        tau = self.config.adapt.adapt_tau if self.kind == "adapt" else self.config.adapt.bm25_tau
        out: dict[str, Any] = {"kind": self.kind, "tau": tau}
        if self.kind == "adapt":
            out.update(refresh=self.config.adapt.adapt_refresh, anchor_refreshes=self.refreshes)
        else:
            out["bm25_mean_std"] = list(self.bm25_stats) if self.bm25_stats else None
        if self._total is not None:
            sums, counts = to_numpy(self._total.sums), to_numpy(self._total.counts)
            out["weight_mean"] = float(sums.sum() / max(counts.sum(), 1.0))
            out["weight_by_domain"] = _by_domain(self._total, domains)
        return out

    def _merged(self) -> WeightedStepInfo | None:
        info = None
        for part in self._pending:
            info = merge_step_info(info, part)
        return info

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Centroid, schedule position, pending statistics, BM25 statistics."""
        return {
            "kind": self.kind,
            "adapt": self.state,
            "last_refresh": self.last_refresh,
            "refreshes": self.refreshes,
            "pending": self._merged(),
            "total": self._total,
            "bm25_stats": None if self.bm25_stats is None else list(self.bm25_stats),
        }

    def load_state_dict(self, state: dict, to_device: Any) -> None:
        """Restore ``state_dict``; ``to_device`` moves host arrays onto the engine's device."""
        if state.get("kind") != self.kind:
            raise ConfigError(f"checkpoint has weighting {state.get('kind')!r}, run {self.kind!r}")
        self.state = None if state["adapt"] is None else to_device(AdaptState(*state["adapt"]))
        self.last_refresh, self.refreshes = int(state["last_refresh"]), int(state["refreshes"])
        pending = state["pending"]
        self._pending = [] if pending is None else [to_device(_step_info(pending))]
        total = state["total"]
        self._total = None if total is None else to_device(DomainStats(*total))
        stats = state["bm25_stats"]
        self.bm25_stats = None if stats is None else (float(stats[0]), float(stats[1]))


def _step_info(tree: Any) -> WeightedStepInfo:
    weights, scores, per_domain = tree
    return WeightedStepInfo(weights, scores, DomainStats(*per_domain))


def _distribution(values: np.ndarray) -> dict[str, float]:
    summary = weight_summary(values.astype(np.float64), LEVELS)
    out = {"mean": float(summary.mean)}
    out.update({f"q{round(100 * q)}": float(v) for q, v in zip(LEVELS, summary.quantiles)})
    out.update(min=float(values.min()), max=float(values.max()))
    return out


def _by_domain(stats: DomainStats, domains: tuple[str, ...]) -> dict[str, float]:
    sums, counts = to_numpy(stats.sums), to_numpy(stats.counts)
    return {d: float(s / c) for d, s, c in zip(domains, sums, counts) if c > 0}
