"""Twins for your own loop: the proxy u and the reference w as one pytree, and pure jitted steps.

``make_twins(model, optimizer)`` returns a static ``TwinSpec`` (the model's non-array part, the
optimizers, the domain counts) and the ``Twins`` (both models' arrays, both optimizer states and
the counters). Every function takes the twins and returns new ones; nothing is mutated, and
batches enter through an explicit ``jax.device_put``, so a loop runs under
``jax.transfer_guard("disallow")``. A TANDEM episode (docs/methods.md, "TANDEM")::

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.0))
    spec, twins = make_twins(model, optimizer, num_domains=m)
    twins = sync(twins)
    for _ in range(k):
        twins, _ = probe(spec, twins, sampler.train_batch(16), sampler.val_batch(32), state.alpha)
    state = update(state, stats(spec, twins, sampler.eval_batch(16)))
    for _ in range(e):
        twins, _ = step(spec, twins, sampler.train_batch(16), state.alpha)

``JaxEngine`` (``engine.py``) is built on these functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import tandem_core as tc

from ._core import Twins, TwinSpec, loss, train_model, twin_distance, twin_losses, twin_stats
from ._ops import Counters, accumulate, apply_updates, batch_counts, count, domain_stats, on_device

__all__ = [
    "TwinSpec",
    "Twins",
    "distance",
    "loss",
    "make_twins",
    "probe",
    "proxy_model",
    "stats",
    "step",
    "sync",
]

NONFINITE = ("skip", "zero", "raise")


def make_twins(
    model: eqx.Module,
    optimizer: optax.GradientTransformation,
    *,
    num_domains: int,
    num_val_domains: int | None = None,
    reference_optimizer: optax.GradientTransformation | None = None,
    nonfinite: str = "skip",
    accumulate: int = 1,
    fuse: bool = False,
    dtype: str | None = None,
) -> tuple[TwinSpec, Twins]:
    """Twins u = w = ``model``, each with its optimizer state.

    Args:
        model: an equinox module ``model(tokens (B, T)) -> (logits (B, T, V), hidden | None)``.
        optimizer: u's optax transformation; the library's default is
            ``optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.0))``.
        num_domains: M.
        num_val_domains: validation domains (default M).
        reference_optimizer: w's (default ``optimizer``); its state must have the same structure.
        nonfinite: ``"skip"`` (a non-finite gradient skips the step exactly; also ``"raise"``:
            the caller stops at its next read of the counters) or ``"zero"`` (zero the gradient).
        accumulate: micro-batches per optimizer step (batch rows must divide by it).
        fuse: one vmapped forward for both twins.
        dtype: cast the parameters to this float dtype (default: keep the model's).

    Returns:
        ``(spec, twins)``.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite={nonfinite!r} is not one of {NONFINITE}")
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if dtype is not None:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    opt = optimizer.init(params)
    opt_reference = opt if reference_optimizer is None else reference_optimizer.init(params)
    if jax.tree.structure(opt_reference) != jax.tree.structure(opt):
        raise ValueError(
            "reference_optimizer's state differs in structure from optimizer's: sync copies u's "
            "state into w (use the same optimizer with other hyper-parameters)"
        )
    spec = TwinSpec(
        static,
        optimizer,
        optimizer if reference_optimizer is None else reference_optimizer,
        num_domains,
        num_val_domains or num_domains,
        accumulate,
        nonfinite != "zero",
        fuse,
        str(jnp.dtype(dtype or jax.tree.leaves(params)[0].dtype)),
    )
    return spec, Twins(params, params, opt, opt_reference, Counters.zeros())


def sync(twins: Twins) -> Twins:
    """``w <- u``: parameters AND optimizer state (immutable arrays: sharing them is a copy)."""
    return dataclasses.replace(twins, reference=twins.proxy, opt_reference=twins.opt_proxy)


def probe_impl(
    spec: TwinSpec, twins: Twins, train: dict, val: dict, alpha: Any, gamma: float
) -> tuple:
    """``probe`` on device batches, unjitted (callers jit it; ``JaxEngine`` once per engine)."""
    m, v = spec.num_domains, spec.num_val_domains
    counts, vcounts = batch_counts(train, m), batch_counts(val, v)
    present = (vcounts > 0).astype(vcounts.dtype)
    val_weights = present / jnp.maximum(present.sum(), 1)

    def total(pair: tuple, mb: tuple) -> tuple:
        tb, vb = mb
        lu, lw, n = twin_losses(spec, pair[0], pair[1], tb["tokens"], tb["labels"])
        su, sw = domain_stats(lu, n, tb["domain"], m), domain_stats(lw, n, tb["domain"], m)
        lv, nv = loss(spec, pair[1], vb["tokens"], vb["labels"])
        val_sums = domain_stats(lv, nv, vb["domain"], v).sums
        loss_w = tc.weighted_objective(val_sums, vcounts, val_weights)
        loss_w = loss_w + gamma * tc.weighted_objective(sw.sums, counts, alpha)
        return tc.weighted_objective(su.sums, counts, alpha) + loss_w, su

    pair = (twins.proxy, twins.reference)
    (_, su), (gu, gw) = accumulate(total, pair, (train, val), spec.accumulate)
    pu, ou, bad_u = apply_updates(spec.tx_proxy, twins.proxy, twins.opt_proxy, gu, spec.exact_skip)
    pw, ow, bad_w = apply_updates(
        spec.tx_reference, twins.reference, twins.opt_reference, gw, spec.exact_skip
    )
    return Twins(pu, pw, ou, ow, count(twins.counters, bad_u | bad_w)), su


# The public functions' executables are cached per spec for the life of the process (one
# ``make_twins`` per model is the intended use); ``JaxEngine`` jits its own, freed with it.
_probe = jax.jit(probe_impl, static_argnames=("spec", "gamma"))


def probe(
    spec: TwinSpec, twins: Twins, train: dict, val: dict, alpha: Any, *, gamma: float = 1.0
) -> tuple[Twins, tc.DomainStats]:
    """One step of both twins on the SAME train batch (jitted).

    u steps on ``L_train`` and w on ``L_val + gamma * L_train`` (docs/methods.md, "TANDEM").

    Args:
        spec: from ``make_twins``.
        twins: the twins.
        train: ``{"tokens", "labels": int (B, T), "domain": int (B,)}`` (host numpy or JAX).
        val: a validation batch, ``domain`` ids below ``num_val_domains``.
        alpha: the mixture ``(M,)``: ``L_train = sum_m alpha_m L^m``; ``None``: the batch mean
            (a batch drawn in proportion to the mixture).
        gamma: the weight of ``L_train`` in w's objective (static: a Python float).

    Returns:
        ``(twins, u's per-domain train statistics)``.
    """
    return _probe(spec, twins, on_device(train), on_device(val), on_device(alpha), gamma)


def step_impl(spec: TwinSpec, twins: Twins, batch: dict, alpha: Any, model: str) -> tuple:
    """``step`` on a device batch, unjitted."""
    return train_model(spec, twins, batch, alpha, model)


_step = jax.jit(step_impl, static_argnames=("spec", "model"))


def step(
    spec: TwinSpec, twins: Twins, train: dict, alpha: Any, *, model: str = "proxy"
) -> tuple[Twins, tc.DomainStats]:
    """One optimizer step of one twin on ``sum_m alpha_m L^m_train`` (jitted).

    Args:
        spec: from ``make_twins``.
        twins: the twins.
        train: a batch (see ``probe``).
        alpha: the mixture ``(M,)``, or ``None`` for the batch mean.
        model: ``"proxy"`` (u, a free step) or ``"reference"`` (w).

    Returns:
        ``(twins, the model's per-domain statistics on the batch)``.
    """
    if model not in ("proxy", "reference"):
        raise ValueError(f"model={model!r} is not one of ('proxy', 'reference')")
    return _step(spec, twins, on_device(train), on_device(alpha), model)


_stats = jax.jit(twin_stats, static_argnames=("spec",))


def stats(spec: TwinSpec, twins: Twins, batch: dict) -> tc.TwinStats:
    """Per-domain statistics of u and w on ``batch`` (jitted, no gradient): the twin signal.

    Feed them to the mixture, e.g.
    ``transform.update(state, stats(spec, twins, sampler.eval_batch(16)))``.
    """
    return _stats(spec, twins, on_device(batch))


@jax.jit
def distance(twins: Twins) -> jax.Array:
    """``||u - w||`` over all parameters: a float scalar on device (0 right after ``sync``)."""
    return twin_distance(twins.proxy, twins.reference)


def proxy_model(spec: TwinSpec, twins: Twins) -> eqx.Module:
    """The proxy u as an equinox module."""
    return eqx.combine(twins.proxy, spec.static)
