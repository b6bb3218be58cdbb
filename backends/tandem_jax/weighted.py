"""Per-sample weighted proxy steps and the anchor refresh (``Signal.SAMPLE_SCORES``).

The weighted step is ONE jitted function: the training forward's last hidden states, under
``stop_gradient``, give the per-sample scores and weights, so the weighting costs no extra
forward. The anchor refresh is a jitted forward per anchor batch plus a jitted ``refresh`` of
the scorer (docs/methods.md). Mirrors ``tandem_torch.weighted``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import tandem_core as tc
from tandem_core import ConfigError

from ._core import Twins, TwinSpec
from ._ops import accumulate_rows, apply_updates, batch_counts, count, domain_stats
from .models import per_sample_loss

__all__ = ["anchor_sum", "refresh", "weighted_step"]


def _need_hidden(hidden: Any) -> jax.Array:
    """Checked while tracing (shapes only): scores need the model's hidden states."""
    if hidden is None or hidden.ndim != 3:
        raise ConfigError(
            "the model does not return hidden states (B, T, H): per-sample scores need a model "
            "returning (logits, hidden)"
        )
    return hidden


def weighted_step(
    spec: TwinSpec, twins: Twins, train: dict, alpha: Any, scorer_state: Any, *, scorer: Any
) -> tuple:
    """One proxy step on ``sum_m alpha_m sum_{i in m} w_i l_i / N_m``, ``w = scorer.gate(s)``.

    Args:
        spec: the twins' spec.
        twins: the twins (u trains).
        train: a device batch; an optional float ``score`` ``(B,)`` column gives ``s`` (static
            lexical scores), else ``s = scorer.scores(scorer_state, hidden, input_mask)``.
        alpha: the mixture ``(M,)``, or ``None`` (a batch drawn in proportion).
        scorer_state: the scorer's state (anchor centroid); unused with a ``score`` column.
        scorer: the scorer transform (static: one compilation per scorer object).

    Returns:
        ``(twins, DomainStats of the unweighted losses, tc.WeightedStepInfo)``.
    """
    m = spec.num_domains
    counts = batch_counts(train, m)

    def objective(p: Any, tb: dict) -> tuple:
        logits, hidden = eqx.combine(p, spec.static)(tb["tokens"])
        per, n = per_sample_loss(logits, tb["labels"])
        if "score" in tb:
            scores = tb["score"].astype(per.dtype)
        else:
            mask = tc.input_mask(tb["labels"])
            hidden = jax.lax.stop_gradient(_need_hidden(hidden)).astype(spec.dtype)
            scores = scorer.scores(scorer_state, hidden, mask).astype(per.dtype)
        w = jax.lax.stop_gradient(scorer.gate(scores))
        ids = tb["domain"]
        value = tc.weighted_objective(domain_stats(w * per, n, ids, m).sums, counts, alpha)
        scored = (n > 0).astype(w.dtype)
        summed = (domain_stats(per, n, ids, m), domain_stats(w * scored, n, ids, m))
        return value, (summed, (w, jax.lax.stop_gradient(scores)))

    (_, ((stats, per_domain), (w, s))), grads = accumulate_rows(
        objective, twins.proxy, train, spec.accumulate
    )
    pu, ou, bad = apply_updates(spec.tx_proxy, twins.proxy, twins.opt_proxy, grads, spec.exact_skip)
    twins = dataclasses.replace(twins, proxy=pu, opt_proxy=ou, counters=count(twins.counters, bad))
    return twins, stats, tc.WeightedStepInfo(w, s, per_domain)


def anchor_sum(spec: TwinSpec, params: Any, batch: dict) -> Any:
    """Pooled hidden states of ``batch`` under ``params`` (forward only): a ``tc.AnchorSum``."""
    _, hidden = eqx.combine(params, spec.static)(batch["tokens"])
    mask = tc.input_mask(batch["labels"])
    phi = tc.pool_hidden(_need_hidden(hidden).astype(spec.dtype), mask)
    return tc.anchor_sum(phi, jnp.any(mask, -1))


def refresh(spec: TwinSpec, scorer_state: Any, acc: Any, step: jax.Array, *, scorer: Any) -> Any:
    """``scorer.refresh(state, acc, step)``; a ``None`` state starts from ``scorer.init``."""
    if scorer_state is None:
        scorer_state = scorer.init(acc.total.shape[0], xp=jnp, dtype=jnp.dtype(spec.dtype))
    return scorer.refresh(scorer_state, acc, step)
