"""Step helpers shared by the twin functions, the engine's signals and the weighted step.

Per-domain statistics, micro-batching for gradient accumulation (``lax.scan``), the optimizer
step with its exact skip of a non-finite gradient, and the device counters. Everything here is
traced inside a caller's ``jax.jit``: nothing reads a value back (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tandem_core as tc

__all__ = [
    "Counters",
    "accumulate",
    "accumulate_rows",
    "apply_updates",
    "batch_counts",
    "count",
    "domain_stats",
    "micro",
    "on_device",
    "scan_sum",
    "segment_sum",
]


class Counters(NamedTuple):
    """Device counters of a pair of twins."""

    step: jax.Array  # (), int32: optimizer steps taken (either model)
    nonfinite: jax.Array  # (), int32: steps skipped for a non-finite gradient
    first_nonfinite: jax.Array  # (), int32: the step of the first one (-1: none)

    @classmethod
    def zeros(cls) -> Counters:
        """Fresh counters: no step, no non-finite step."""
        zero = jnp.zeros((), jnp.int32)
        return cls(zero, zero, zero - 1)


def segment_sum(data: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """``jax.ops.segment_sum`` with the core's ``(data (B, ...), ids (B,), M)`` signature."""
    return jax.ops.segment_sum(data, ids, num_segments=num_segments)


def domain_stats(losses: jax.Array, scored: jax.Array, ids: jax.Array, m: int) -> tc.DomainStats:
    """Per-domain sums of ``losses (B,)`` over rows with scored tokens (``scored (B,) > 0``)."""
    counts = (scored > 0).astype(losses.dtype)
    return tc.domain_stats(losses, ids, m, counts=counts, checked=False, segment_sum=segment_sum)


def batch_counts(batch: dict, m: int) -> jax.Array:
    """Per-domain rows with a scored label in the WHOLE batch: the objective's denominators.

    Float ``(M,)``, the same for every micro-batch (accumulated gradients equal the batch's).
    """
    scored = (batch["labels"] != tc.IGNORE_INDEX).any(-1).astype(jnp.float32)
    return segment_sum(scored, batch["domain"], m)


def on_device(tree: Any) -> Any:
    """Host (numpy) leaves of ``tree`` put on the default device explicitly; JAX arrays kept.

    The explicit ``device_put`` keeps a loop legal under ``jax.transfer_guard("disallow")``.
    """
    return jax.tree.map(
        lambda v: v if isinstance(v, jax.Array) else jax.device_put(np.asarray(v)), tree
    )


def micro(batch: Any, parts: int) -> Any:
    """``(B, ...)`` leaves to ``(parts, B / parts, ...)``: micro-batches for ``lax.scan``."""

    def cut(a: jax.Array) -> jax.Array:
        if a.shape[0] % parts:
            raise ValueError(
                f"a batch of {a.shape[0]} rows cannot be cut into {parts} micro-batches"
            )
        return a.reshape(parts, a.shape[0] // parts, *a.shape[1:])

    return jax.tree.map(cut, batch)


def accumulate(fn: Callable, params: Any, batch: Any, parts: int) -> tuple:
    """``value_and_grad`` of ``fn(params, micro) -> (loss, aux)`` summed over micro-batches."""
    grad_fn = jax.value_and_grad(fn, has_aux=True)
    if parts == 1:
        return grad_fn(params, batch)
    mb = micro(batch, parts)

    def body(carry: Any, part: Any) -> tuple:
        return jax.tree.map(jnp.add, carry, grad_fn(params, part)), None

    first = jax.tree.map(lambda a: a[0], mb)
    out, _ = jax.lax.scan(body, grad_fn(params, first), jax.tree.map(lambda a: a[1:], mb))
    return out


def accumulate_rows(fn: Callable, params: Any, batch: dict, parts: int) -> tuple:
    """``value_and_grad`` of ``fn(params, micro) -> (loss, (summed, rows))`` over micro-batches.

    The loss, the ``summed`` aux and the gradients add up; the ``rows`` aux (leaves ``(b, ...)``)
    is concatenated back to the batch's row order ``(B, ...)``.
    """
    grad_fn = jax.value_and_grad(fn, has_aux=True)
    if parts == 1:
        return grad_fn(params, batch)
    mb = micro(batch, parts)
    (loss, (summed, rows)), grads = grad_fn(params, jax.tree.map(lambda a: a[0], mb))

    def body(carry: Any, part: dict) -> tuple:
        (l_mb, (s_mb, r_mb)), g_mb = grad_fn(params, part)
        return jax.tree.map(jnp.add, carry, (l_mb, s_mb, g_mb)), r_mb

    rest = jax.tree.map(lambda a: a[1:], mb)
    (loss, summed, grads), more = jax.lax.scan(body, (loss, summed, grads), rest)
    rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b.reshape(-1, *b.shape[2:])]), rows, more)
    return (loss, (summed, rows)), grads


def scan_sum(fn: Callable, batch: dict, parts: int) -> Any:
    """``fn(micro_batch)`` summed over micro-batches (no gradients: evaluation statistics)."""
    if parts == 1:
        return fn(batch)
    mb = micro(batch, parts)
    first = fn(jax.tree.map(lambda a: a[0], mb))

    def body(carry: Any, part: dict) -> tuple:
        return jax.tree.map(jnp.add, carry, fn(part)), None

    return jax.lax.scan(body, first, jax.tree.map(lambda a: a[1:], mb))[0]


def apply_updates(
    tx: optax.GradientTransformation, params: Any, opt: Any, grads: Any, exact: bool = True
) -> tuple:
    """Optimizer step; one with a non-finite gradient is skipped and reported.

    Skipped: parameters and optimizer state keep their values (as the torch engine does). The
    gradient is also zeroed so that no NaN flows through the optimizer's arithmetic; with
    ``exact=False`` (``nonfinite="zero"``) that is all, and momentum and decay still apply.

    Returns:
        ``(params, opt, bad)`` with ``bad`` a bool scalar: the gradient was not finite.
    """
    finite = jnp.isfinite(optax.tree.norm(grads))
    grads = jax.tree.map(
        lambda g: jnp.where(finite, jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0), 0), grads
    )
    updates, new_opt = tx.update(grads, opt, params)
    if not exact:
        return optax.apply_updates(params, updates), new_opt, ~finite
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_params = jax.tree.map(keep, optax.apply_updates(params, updates), params)
    return new_params, jax.tree.map(keep, new_opt, opt), ~finite


def count(counters: Counters, bad: jax.Array) -> Counters:
    """One more step; ``bad`` (bool scalar) counts a skipped one and may set the first."""
    step, nonfinite, first = counters
    first = jnp.where(bad & (first < 0), step, first)
    return Counters(step + 1, nonfinite + bad.astype(nonfinite.dtype), first)
