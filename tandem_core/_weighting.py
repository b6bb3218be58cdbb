"""Per-sample weighting inside ``MixtureRun`` (ADAPT and ADAPT-BM25, SPEC 2): the host-side part.

``SampleWeighting`` owns what the run loop needs beyond the engine's weighted step: the fixed anchor
batches, the refresh schedule of the anchor centroid (every ``R`` proxy steps, step 0 included), the
ADAPT-BM25 index and its standardisation, and the weight / score statistics kept on device until a
logging step. The engine (``weighted_free`` / ``adapt_refresh``) does the device work.

Design choices (SPEC 2.3 leaves them open):

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
from typing import Any, NamedTuple

import numpy as np

from ._utils import Array, namespace, to_numpy
from .accounting import DomainStats, merge_stats
from .adapt import AdaptState, AdaptTransform, adapt_mask, bm25_term_weights, weight_summary
from .config import ConfigError, TrainConfig, check_weighting_method, make_adapt
from .data import IGNORE_INDEX, Batch, check_batch

__all__ = ["AdaptStepInfo", "SampleWeighting", "anchor_batches", "merge_step_info"]

LEVELS = (0.1, 0.5, 0.9)


class AdaptStepInfo(NamedTuple):
    """What a weighted step reports besides the loss statistics (on device)."""

    weights: Array  # (B,) float: w_i of this process's rows (stop-gradient), in batch order
    scores: Array  # (B,) float: s_i before the gate (cosine, or standardised BM25)
    per_domain: DomainStats  # sums of w_i over each domain's scored rows, and their counts


def merge_step_info(a: AdaptStepInfo | None, b: AdaptStepInfo) -> AdaptStepInfo:
    """Concatenate the rows of two ``AdaptStepInfo`` and add their per-domain sums."""
    if a is None:
        return b
    xp = namespace(a.weights, b.weights)
    return AdaptStepInfo(
        xp.concat([a.weights, b.weights]),
        xp.concat([a.scores, b.scores]),
        merge_stats(a.per_domain, b.per_domain),
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
            ``sampler.validation_sets(config.adapt_anchor_max)``.
        transform: a custom ``AdaptTransform`` (default ``make_adapt(config)``).
        vocab_size: token ids of the anchors must be below it.
    """

    def __init__(
        self,
        config: TrainConfig,
        sampler: Any,
        anchors: list[Batch] | None = None,
        *,
        transform: AdaptTransform | None = None,
        vocab_size: int | None = None,
    ) -> None:
        check_weighting_method(config)
        if config.weighting not in ("adapt", "bm25"):
            raise ConfigError(f"weighting={config.weighting!r}: nothing to weight")
        self.config, self.sampler, self.kind = config, sampler, config.weighting
        self.transform = transform or make_adapt(config)
        if anchors is None:
            anchors = sampler.validation_sets(config.adapt_anchor_max)
        self.anchors = anchor_batches(anchors, config.adapt_anchor_batch, vocab_size=vocab_size)
        self.vocab_size = vocab_size or sampler.vocab_size
        self.state: AdaptState | None = None  # on device, after the first refresh
        self.last_refresh = -1  # host copy of the refresh step: no device read to schedule
        self.refreshes = 0
        self._pending: list[AdaptStepInfo] = []  # since the last logging step
        self._total: DomainStats | None = None  # whole run, per domain
        self._terms: np.ndarray | None = None  # BM25 weight per vocabulary term (V,)
        self.bm25_stats: tuple[float, float] | None = None  # (mean, std) of raw BM25 scores

    # ---------------------------------------------------------------- steps
    def step(self, engine: Any, train: Batch, alpha: Array | None, step: int) -> DomainStats:
        """Refresh the anchor centroid when due, then one weighted step of the proxy."""
        if self.kind == "adapt":
            if self.transform.needs_refresh(step) and step != self.last_refresh:
                self.state = engine.adapt_refresh(self.transform, self.state, self.anchors, step)
                self.last_refresh, self.refreshes = step, self.refreshes + 1
        else:
            train = {**train, "score": self.bm25(train)}
        stats, info = engine.weighted_free(train, alpha, self.transform, self.state)
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
                mask = to_numpy(adapt_mask(b["labels"]))
                docs += [row[m] for row, m in zip(b["tokens"], mask) if m.any()]
            cfg = self.config
            self._terms = bm25_term_weights(docs, self.vocab_size, k1=cfg.bm25_k1, b=cfg.bm25_b)
        if self.bm25_stats is None:
            per = math.ceil(self.config.bm25_sample / len(self.sampler.domains))
            raw = self._raw_bm25(self.sampler.eval_batch(per))
            std = float(raw.std())
            self.bm25_stats = (float(raw.mean()), std if std > 0 else 1.0)
        mean, std = self.bm25_stats
        return ((self._raw_bm25(batch) - mean) / std).astype(self.config.dtype)

    def _raw_bm25(self, batch: Batch) -> np.ndarray:
        tokens, labels = np.asarray(batch["tokens"]), np.asarray(batch["labels"])
        mask = to_numpy(adapt_mask(labels))
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
        tau = self.config.adapt_tau if self.kind == "adapt" else self.config.bm25_tau
        out: dict[str, Any] = {"kind": self.kind, "tau": tau}
        if self.kind == "adapt":
            out.update(refresh=self.config.adapt_refresh, anchor_refreshes=self.refreshes)
        else:
            out["bm25_mean_std"] = list(self.bm25_stats) if self.bm25_stats else None
        if self._total is not None:
            sums, counts = to_numpy(self._total.sums), to_numpy(self._total.counts)
            out["weight_mean"] = float(sums.sum() / max(counts.sum(), 1.0))
            out["weight_by_domain"] = _by_domain(self._total, domains)
        return out

    def _merged(self) -> AdaptStepInfo | None:
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


def _step_info(tree: Any) -> AdaptStepInfo:
    weights, scores, per_domain = tree
    return AdaptStepInfo(weights, scores, DomainStats(*per_domain))


def _distribution(values: np.ndarray) -> dict[str, float]:
    summary = weight_summary(values.astype(np.float64), LEVELS)
    out = {"mean": float(summary.mean)}
    out.update({f"q{round(100 * q)}": float(v) for q, v in zip(LEVELS, summary.quantiles)})
    out.update(min=float(values.min()), max=float(values.max()))
    return out


def _by_domain(stats: DomainStats, domains: tuple[str, ...]) -> dict[str, float]:
    sums, counts = to_numpy(stats.sums), to_numpy(stats.counts)
    return {d: float(s / c) for d, s, c in zip(domains, sums, counts) if c > 0}
