"""The twins' types and the traced computations that every jitted step composes.

``TwinSpec`` is the static half (compiled into each program), ``Twins`` the pytree of arrays.
The functions here are traced inside a caller's ``jax.jit`` (``twins.py``, ``signals.py``,
``weighted.py``); none of them is jitted or reads a value back (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import tandem_core as tc

from ._ops import Counters, accumulate, apply_updates, batch_counts, count, domain_stats, scan_sum
from .models import per_sample_loss

__all__ = ["TwinSpec", "Twins", "loss", "train_model", "twin_distance", "twin_losses", "twin_stats"]


@dataclasses.dataclass(frozen=True, eq=False)
class TwinSpec:
    """The static half of the twins: compiled into every step (hashed by identity).

    Attributes:
        static: the model's non-array partition (``eqx.partition(model, eqx.is_inexact_array)``).
        tx_proxy: u's optax transformation (gradient clipping included).
        tx_reference: w's; its state has the same structure (``sync`` copies u's into it).
        num_domains: M, the training domains (``batch["domain"]`` ids).
        num_val_domains: the validation domains of ``val`` batches.
        accumulate: micro-batches per optimizer step.
        exact_skip: a non-finite gradient keeps parameters and optimizer state (``False``: the
            gradient is only zeroed).
        fuse: both twins' forwards as one vmapped forward over stacked parameters.
        dtype: the parameters' float dtype (``"float32"``).
    """

    static: Any
    tx_proxy: optax.GradientTransformation
    tx_reference: optax.GradientTransformation
    num_domains: int
    num_val_domains: int
    accumulate: int = 1
    exact_skip: bool = True
    fuse: bool = False
    dtype: str = "float32"


class Twins(eqx.Module):
    """The arrays of the twins: parameters, optimizer states and counters (a pytree)."""

    proxy: Any  # u's float-array partition of the model
    reference: Any  # w's, the same structure
    opt_proxy: Any  # u's optax state
    opt_reference: Any  # w's optax state
    counters: Counters  # int32 scalars: step, nonfinite, first_nonfinite


def loss(spec: TwinSpec, params: Any, tokens: jax.Array, labels: jax.Array) -> tuple:
    """Per-sample loss of the model with ``params``: ``(loss (B,), scored tokens (B,))``.

    ``tokens`` and ``labels`` are int ``(B, T)``; the loss is the token-mean cross-entropy over
    scored labels (0 for a row with none).
    """
    logits, _ = eqx.combine(params, spec.static)(tokens)
    return per_sample_loss(logits, labels)


def twin_losses(spec: TwinSpec, pu: Any, pw: Any, tokens: jax.Array, labels: jax.Array) -> tuple:
    """Both twins' per-sample losses on one batch: ``(loss_u (B,), loss_w (B,), scored (B,))``."""
    if not spec.fuse:
        (lu, n), (lw, _) = loss(spec, pu, tokens, labels), loss(spec, pw, tokens, labels)
        return lu, lw, n
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), pu, pw)
    both, n = jax.vmap(functools.partial(loss, spec), in_axes=(0, None, None))(
        stacked, tokens, labels
    )
    return both[0], both[1], n[0]


def train_model(spec: TwinSpec, twins: Twins, batch: dict, alpha: Any, model: str) -> tuple:
    """One optimizer step of ``model`` on the alpha-weighted objective (traced, not jitted)."""
    reference = model == "reference"
    params = twins.reference if reference else twins.proxy
    opt = twins.opt_reference if reference else twins.opt_proxy
    counts = batch_counts(batch, spec.num_domains)

    def objective(p: Any, mb: dict) -> tuple:
        out = domain_stats(
            *loss(spec, p, mb["tokens"], mb["labels"]), mb["domain"], spec.num_domains
        )
        return tc.weighted_objective(out.sums, counts, alpha), out

    (_, out), grads = accumulate(objective, params, batch, spec.accumulate)
    tx = spec.tx_reference if reference else spec.tx_proxy
    params, opt, bad = apply_updates(tx, params, opt, grads, spec.exact_skip)
    if reference:
        twins = dataclasses.replace(twins, reference=params, opt_reference=opt)
    else:
        twins = dataclasses.replace(twins, proxy=params, opt_proxy=opt)
    return dataclasses.replace(twins, counters=count(twins.counters, bad)), out


def twin_stats(spec: TwinSpec, twins: Twins, batch: dict) -> tc.TwinStats:
    """Both twins' per-domain statistics on ``batch``, summed over micro-batches (traced)."""
    m = spec.num_domains

    def one(mb: dict) -> tc.TwinStats:
        lu, lw, n = twin_losses(spec, twins.proxy, twins.reference, mb["tokens"], mb["labels"])
        return tc.TwinStats(
            domain_stats(lu, n, mb["domain"], m), domain_stats(lw, n, mb["domain"], m)
        )

    return scan_sum(one, batch, spec.accumulate)


def twin_distance(pu: Any, pw: Any) -> jax.Array:
    """``||u - w||`` over all parameters, a float scalar (traced)."""
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), pu, pw))
    return jnp.sqrt(sum(diffs))
