"""The engine's signals on device: measure one, update the mixture, train (docs/architecture.md).

``JaxEngine`` jits these once per engine (per signal, update and model): ``signal_step``
measures the signal on the whole batch FIRST, updates the mixture, then trains with the new
alpha (never a stale mixture); ``measure`` measures and updates without training. The signals:
``TWIN`` (both twins' statistics, with Delta and the twin distance as diagnostics), ``EXCESS_LOSS``
(per-token ``max(l_u - l_w, 0)`` against the frozen reference w), ``ALIGNMENT``
(``tc.AlignmentStats``: per-domain gradient alignment and gradient norms; its step reuses the
per-domain gradients), ``PROXY_LOSSES`` and ``NONE``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import tandem_core as tc
from tandem_core.methods import Signal

from ._core import Twins, TwinSpec, loss, train_model, twin_distance, twin_stats
from ._ops import apply_updates, count, domain_stats, scan_sum, segment_sum
from .grads import alignment_gradients, alignment_stats
from .models import token_losses

__all__ = ["measure", "signal_step"]


def _excess_loss(spec: TwinSpec, twins: Twins, batch: dict) -> tc.DomainStats:
    """Per-domain sums of per-token ``max(l_u - l_w, 0)`` over scored tokens, all micro-batches."""

    def tokens_of(params: Any, mb: dict) -> jax.Array:
        return token_losses(eqx.combine(params, spec.static)(mb["tokens"])[0], mb["labels"])

    def one(mb: dict) -> tc.DomainStats:
        return tc.excess_loss_stats(
            tokens_of(twins.proxy, mb),
            tokens_of(twins.reference, mb),
            mb["labels"] != tc.IGNORE_INDEX,
            mb["domain"],
            spec.num_domains,
            checked=False,
            segment_sum=segment_sum,
        )

    return scan_sum(one, batch, spec.accumulate)


def _proxy_losses(spec: TwinSpec, twins: Twins, batch: dict) -> tc.DomainStats:
    """Per-domain sums of the proxy's per-sample losses (no gradient), all micro-batches."""

    def one(mb: dict) -> tc.DomainStats:
        out = loss(spec, twins.proxy, mb["tokens"], mb["labels"])
        return domain_stats(*out, mb["domain"], spec.num_domains)

    return scan_sum(one, batch, spec.accumulate)


def _alignment(spec: TwinSpec, twins: Twins, train: dict, val: dict) -> tuple:
    """``(per-domain grads (M, ...), AlignmentStats, losses (B,), scored (B,))`` of u."""
    if val is None:
        raise ValueError("the alignment signal reads a validation batch: pass val")
    m = spec.num_domains
    losses = functools.partial(loss, spec)
    grads, val_grad, per, n = alignment_gradients(
        losses, twins.proxy, train, val, m, spec.num_val_domains
    )
    return grads, alignment_stats(grads, val_grad, m), per, n


def _signal(spec: TwinSpec, twins: Twins, signal: Signal, batch: dict, val: Any) -> Any:
    """What ``update(state, .)`` reads for ``signal`` on ``batch`` (traced)."""
    if signal is Signal.NONE:
        return None
    if signal is Signal.TWIN:
        return twin_stats(spec, twins, batch)
    if signal is Signal.EXCESS_LOSS:
        return _excess_loss(spec, twins, batch)
    if signal is Signal.PROXY_LOSSES:
        return _proxy_losses(spec, twins, batch)
    if signal is Signal.ALIGNMENT:
        return _alignment(spec, twins, batch, val)[1]
    raise ValueError(f"signal {signal.value!r} is measured by weighted_step, not here")


def signal_step(
    spec: TwinSpec,
    twins: Twins,
    batch: dict,
    val: Any,
    state: tc.MixtureState,
    *,
    signal: Signal,
    update: Callable | None,
    model: str,
    reweight: bool,
) -> tuple:
    """Measure ``signal`` on ``batch``, ``update`` the mixture, then one step of ``model``.

    ``update`` ``None``: the signal is not read (``ALIGNMENT`` still steps on its per-domain
    gradients). ``reweight``: the objective is weighted by the (new) ``state.alpha``, else the
    batch mean.

    Returns:
        ``(twins, state, per-domain statistics of the step)``.
    """
    if signal is Signal.ALIGNMENT:
        return _alignment_step(spec, twins, batch, val, state, update)
    if update is not None:
        state = update(state, _signal(spec, twins, signal, batch, val))
    twins, stats = train_model(spec, twins, batch, state.alpha if reweight else None, model)
    return twins, state, stats


def _alignment_step(
    spec: TwinSpec, twins: Twins, batch: dict, val: dict, state: Any, update: Callable | None
) -> tuple:
    """The proxy steps on ``sum_m alpha_m g_m``, reusing the gradients that gave the scores."""
    grads, stats, per, n = _alignment(spec, twins, batch, val)
    if update is not None:
        state = update(state, stats)
    combined = jax.tree.map(lambda g: jnp.tensordot(state.alpha.astype(g.dtype), g, axes=1), grads)
    pu, ou, bad = apply_updates(
        spec.tx_proxy, twins.proxy, twins.opt_proxy, combined, spec.exact_skip
    )
    twins = dataclasses.replace(twins, proxy=pu, opt_proxy=ou, counters=count(twins.counters, bad))
    return twins, state, domain_stats(per, n, batch["domain"], spec.num_domains)


def measure(
    spec: TwinSpec,
    twins: Twins,
    batch: dict,
    val: Any,
    state: tc.MixtureState,
    *,
    signal: Signal,
    update: Callable,
) -> tuple:
    """Measure ``signal`` on ``batch`` (no training) and ``update`` the mixture.

    Returns:
        ``(state, diagnostics)``: for ``TWIN`` ``{"delta": (M,), "twin_distance": ()}``, else
        ``{}``.
    """
    if signal is not Signal.TWIN:
        return update(state, _signal(spec, twins, signal, batch, val)), {}
    twin = twin_stats(spec, twins, batch)
    info = {
        "delta": tc.twin_delta(twin)[0],
        "twin_distance": twin_distance(twins.proxy, twins.reference),
    }
    return update(state, twin), info
