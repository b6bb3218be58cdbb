"""The sample-scores signal on ``Twins``: per-sample weighted proxy step and anchor refresh.

The weighted step reuses the training forward's last hidden states (detached: the weights are
constants for the optimizer), so scoring costs no extra forward; the anchor refresh is a forward
only, in eval mode and under ``no_grad``. Nothing is read on the host (docs/methods.md).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp_torch
import torch

import tandem_core as tc

from .batches import domain_stats, merge
from .models import eval_mode, logits_and_hidden
from .twins import Twins

__all__ = ["anchor_refresh", "weighted_step"]


def weighted_step(
    twins: Twins, train: dict, alpha: torch.Tensor | None, scorer: Any, scorer_state: Any
) -> tuple[tc.DomainStats, tc.WeightedStepInfo]:
    """One per-sample weighted step of the proxy u.

    Per micro-batch: ``sum_m alpha_m sum_{i in m} w_i l_i / N_m`` with the whole batch's
    counts ``N_m``, so accumulation and DDP equal one big batch (the gate is per sample).

    Args:
        twins: the twins (only the proxy trains).
        train: the train batch; an optional float ``score`` ``(B,)`` column replaces the
            scorer's cosine of the hidden states (static lexical scores).
        alpha: the mixture ``(M,)`` on device, or ``None`` (a batch sampled in proportion).
        scorer: the per-sample scorer (its ``scores(state, hidden, mask)`` and ``gate(s)``).
        scorer_state: its state (anchor centroid); unused with a ``score`` column.

    Returns:
        ``(DomainStats of the unweighted losses, WeightedStepInfo)``, on device.
    """
    m = twins.m
    parts, counts = twins.split(train)
    stats = info = None
    for i, tb in enumerate(parts):
        loss, n, hidden = twins.losses_and_hidden(tb["tokens"], tb["labels"])
        w, s = _sample_weights(twins, tb, hidden, scorer, scorer_state, loss.dtype)
        ids = tb["domain"]
        weighted = domain_stats(w * loss, n, ids, m)
        objective = tc.weighted_objective(weighted.sums, counts, alpha)
        twins.stepper.backward(objective, i == len(parts) - 1)
        scored = (n > 0).to(w.dtype)
        part = tc.WeightedStepInfo(w, s.detach(), domain_stats(w * scored, n, ids, m))
        stats = merge(stats, domain_stats(loss, n, ids, m))
        info = tc.merge_step_info(info, part)
    twins.stepper.step([(twins.opt_proxy, twins.proxy)])
    return stats, info


@torch.no_grad()
def anchor_refresh(
    twins: Twins, scorer: Any, scorer_state: Any, batches: list[dict], step: int
) -> Any:
    """Anchor centroid of the current proxy (eval mode, no grad), then ``scorer.refresh``.

    Every rank embeds every anchor batch (no collective; identical centroids). ``scorer_state``
    ``None`` starts from ``scorer.init`` with the hidden size of the model.
    """
    acc = None
    with eval_mode(twins.proxy):
        for batch in batches:
            b = twins.batch(batch)
            _, hidden = logits_and_hidden(twins.proxy, None, b["tokens"])
            hidden = _need_hidden(hidden, twins.proxy).to(twins.dtype)
            mask = tc.input_mask(b["labels"])
            part = tc.anchor_sum(tc.pool_hidden(hidden, mask), mask.any(-1))
            acc = part if acc is None else tc.merge_anchor_sums(acc, part)
    if scorer_state is None:
        size = acc.total.shape[0]
        scorer_state = scorer.init(size, xp=xp_torch, dtype=twins.dtype, device=twins.device)
    return scorer.refresh(scorer_state, acc, step)


def _sample_weights(
    twins: Twins, batch: dict, hidden: Any, scorer: Any, state: Any, dtype: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, s)`` ``(B,)``: the gate of the batch's ``score`` column or of the scorer's cosine."""
    if "score" in batch:
        scores = batch["score"].to(dtype)
    else:
        mask = tc.input_mask(batch["labels"])
        hidden = _need_hidden(hidden, twins.proxy).detach().to(twins.dtype)
        scores = scorer.scores(state, hidden, mask).to(dtype)
    return scorer.gate(scores).detach(), scores


def _need_hidden(hidden: Any, module: Any) -> torch.Tensor:
    if hidden is None or hidden.ndim != 3:
        raise tc.ConfigError(
            f"{type(module).__name__} does not return hidden states (B, T, H): per-sample "
            "scores need (logits, hidden) from the model (or a Hugging Face output with "
            "hidden_states)"
        )
    return hidden
