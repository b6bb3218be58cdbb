"""Signal measurements on ``Twins``: what a mixture update reads, measured on device.

One function per ``tandem_core.methods.Signal`` (docs/architecture.md, "How to add a method");
each measures a batch without training and returns the statistics ``update(state, stats)``
reads, reduced over every micro-batch and rank, and reads nothing on the host.
"""

from __future__ import annotations

from typing import Any

import torch

import tandem_core as tc
from tandem_core.methods import Signal

from .batches import Split, domain_stats, merge, segment_sum
from .distributed import all_reduce_sum
from .grads import alignment_gradients, alignment_stats
from .models import eval_mode, token_losses
from .twins import Twins

__all__ = ["alignment", "excess_loss", "measure", "proxy_losses", "twin"]


def measure(
    signal: Signal, twins: Twins, batch: dict | Split, *, val: dict | None = None
) -> tuple[Any, dict[str, torch.Tensor]]:
    """``(stats for update, diagnostics)`` of ``signal`` on ``batch`` (``val``: alignment).

    Raises:
        ConfigError: a signal that is not a mixture measurement (per-sample scores).
    """
    if signal is Signal.NONE:
        return None, {}
    if signal is Signal.TWIN:
        return twin(twins, batch)
    if signal is Signal.PROXY_LOSSES:
        return proxy_losses(twins, batch), {}
    if signal is Signal.EXCESS_LOSS:
        return excess_loss(twins, batch), {}
    if signal is Signal.ALIGNMENT:
        return alignment(twins, batch, val)[0], {}
    raise tc.ConfigError(
        f"signal {signal.value!r} is not a mixture measurement (per-sample scores go through "
        "weighted_step)"
    )


def twin(twins: Twins, batch: dict | Split) -> tuple[tc.TwinStats, dict[str, torch.Tensor]]:
    """``TwinStats`` of u and w (eval mode), with ``delta (M,)`` and ``twin_distance ()``."""
    stats = twins.stats(batch)
    delta, _ = tc.twin_delta(stats)
    return stats, {"delta": delta, "twin_distance": twins.distance()}


@torch.no_grad()
def proxy_losses(twins: Twins, batch: dict | Split) -> tc.DomainStats:
    """The proxy's per-domain losses ``(M,)`` (eval mode), every micro-batch, summed over ranks."""
    stats = None
    with eval_mode(twins.proxy):
        for b in twins.split(batch).parts:
            loss, n = twins.losses(b["tokens"], b["labels"])
            stats = merge(stats, domain_stats(loss, n, b["domain"], twins.m))
    return tc.all_reduce_stats(stats, all_reduce_sum)


@torch.no_grad()
def excess_loss(twins: Twins, batch: dict | Split) -> tc.DomainStats:
    """Per-token ``max(l_u - l_w, 0)`` against the frozen reference w, per domain ``(M,)``.

    w in eval mode; every micro-batch; summed over ranks.
    """
    excess = None
    with eval_mode(twins.reference):
        for b in twins.split(batch).parts:
            keep = b["labels"] != tc.IGNORE_INDEX
            ref = token_losses(twins.forward(b["tokens"], "reference")[0], b["labels"])
            tok = token_losses(twins.forward(b["tokens"], "proxy")[0], b["labels"])
            part = tc.excess_loss_stats(
                tok, ref, keep, b["domain"], twins.m, checked=False, segment_sum=segment_sum
            )
            excess = merge(excess, part)
    return tc.all_reduce_stats(excess, all_reduce_sum)


def alignment(twins: Twins, train: dict, val: dict | None) -> tuple:
    """``tc.AlignmentStats``: ``<grad L^m_train(u), grad L_val(u)>`` and the norms (one process).

    Args:
        twins: the twins (the proxy's gradients).
        train: the train batch: M consecutive per-domain blocks (``sampling="reweight"``).
        val: the validation batch.

    Returns:
        ``(AlignmentStats, grads {name: (M, ...)}, losses (B,), scored (B,), device batch)``;
        the gradients serve the step that follows.
    """
    if val is None:
        raise ValueError("the alignment signal reads a validation batch: pass val=")
    tb, vb = twins.batch(train), twins.batch(val)
    grads, val_grad, losses, n = alignment_gradients(twins.proxy, tb, vb, twins.m, twins.v)
    return alignment_stats(grads, val_grad), grads, losses, n, tb


def aligned_step(
    twins: Twins, train: dict, val: dict | None, state: tc.MixtureState, update: Any
) -> tuple[tc.MixtureState, tc.DomainStats]:
    """The aligned step: the alignment signal, the mixture update, u on ``sum_m alpha_m g_m``.

    The per-domain gradients ``(M, ...)`` that measure the alignment also make the step (never a
    stale mixture). ``update``: ``f(state, AlignmentStats) -> state``, or ``None`` (no update).

    Returns:
        The new mixture state and the step's per-domain train ``DomainStats`` ``(M,)``.
    """
    stats, grads, losses, n, tb = alignment(twins, train, val)
    if update is not None:
        state = update(state, stats)
    alpha = state.alpha.to(twins.dtype)
    twins.apply_gradients({k: torch.einsum("m,m...->...", alpha, g) for k, g in grads.items()})
    return state, domain_stats(losses, n, tb["domain"], twins.m)
