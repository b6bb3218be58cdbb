"""Per-domain gradients with ``jax.vmap(jax.grad)``: the alignment signal (docs/methods.md).

The signal ``tc.AlignmentStats`` holds ``<grad L^m_train(u), grad L_val(u)>`` and the norms of
those gradients; it reads the gradient of each domain's mean loss, and the step then reuses those
gradients (``sum_m alpha_m g_m``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import tandem_core as tc

__all__ = ["alignment_gradients", "alignment_stats", "domain_gradients", "validation_gradient"]

LossFn = Callable[
    [Any, jax.Array, jax.Array], tuple
]  # (params, tokens, labels) -> (loss (B,), n (B,))


def domain_gradients(losses: LossFn, params: Any, batch: dict, num_domains: int) -> tuple:
    """Gradient of each domain's mean loss, vmapped over the ``M`` blocks of a ``train_batch``.

    Returns:
        ``(grads with leaves (M, ...), losses (B,), scored (B,))``.
    """
    rows, t = batch["tokens"].shape
    tokens = batch["tokens"].reshape(num_domains, rows // num_domains, t)
    labels = batch["labels"].reshape(num_domains, rows // num_domains, t)

    def domain_loss(p: Any, tok: jax.Array, lab: jax.Array) -> tuple:
        loss, n = losses(p, tok, lab)
        keep = (n > 0).astype(loss.dtype)
        return (loss * keep).sum() / jnp.maximum(keep.sum(), 1), (loss, n)

    grads, (loss, n) = jax.vmap(jax.grad(domain_loss, has_aux=True), in_axes=(None, 0, 0))(
        params, tokens, labels
    )
    return grads, loss.reshape(rows), n.reshape(rows)


def validation_gradient(losses: LossFn, params: Any, batch: dict, num_val_domains: int) -> Any:
    """Gradient of ``L_val`` (mean over validation domains of their mean loss)."""

    def val_loss(p: Any) -> jax.Array:
        loss, n = losses(p, batch["tokens"], batch["labels"])
        stats = tc.domain_stats(
            loss,
            batch["domain"],
            num_val_domains,
            counts=(n > 0).astype(loss.dtype),
            checked=False,
            segment_sum=lambda d, i, k: jax.ops.segment_sum(d, i, num_segments=k),
        )
        means, present = tc.domain_means(stats)
        return means.sum() / jnp.maximum(present.sum(), 1)

    return jax.grad(val_loss)(params)


def alignment_gradients(
    losses: LossFn, params: Any, train: dict, val: dict, m: int, v: int
) -> tuple:
    """Per-domain train gradients and the validation gradient of ``params``.

    Args:
        losses: ``(params, tokens, labels) -> (loss (B,), scored (B,))``.
        params: the model's float-array partition.
        train: a batch of ``m`` equal per-domain blocks (``sampling="reweight"``).
        val: a validation batch over ``v`` domains.
        m: training domains.
        v: validation domains.

    Returns:
        ``(grads with leaves (M, ...), validation grad, per-sample losses (B,), scored (B,))``.
    """
    grads, loss, n = domain_gradients(losses, params, train, m)
    return grads, validation_gradient(losses, params, val, v), loss, n


def alignment_stats(grads: Any, val_grad: Any, m: int) -> tc.AlignmentStats:
    """``<g_m, g_val>`` ``(M,)``, ``||g_m||`` ``(M,)`` and ``||g_val||`` ``()`` over all parameters.

    Args:
        grads: per-domain gradients, leaves ``(M, ...)``.
        val_grad: the validation gradient, the same leaves without the domain axis.
        m: training domains.
    """

    def total(tree: Any) -> jax.Array:
        return sum(jax.tree.leaves(tree))

    scores = total(jax.tree.map(lambda g, vg: g.reshape(m, -1) @ vg.reshape(-1), grads, val_grad))
    squares = total(jax.tree.map(lambda g: jnp.sum(jnp.square(g.reshape(m, -1)), axis=1), grads))
    val_squares = total(jax.tree.map(lambda g: jnp.sum(jnp.square(g)), val_grad))
    return tc.AlignmentStats(scores, jnp.sqrt(squares), jnp.sqrt(val_squares))
