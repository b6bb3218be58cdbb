"""Per-domain gradients with ``torch.func``: the alignment signal (docs/methods.md).

The signal ``tc.AlignmentStats`` holds ``<grad L^m_train(u), grad L_val(u)>`` and the norms of
those gradients; it needs each domain's gradient separately; they come from one ``vmap`` over the
domains' sub-batches, and the proxy's step then reuses them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, vmap

import tandem_core as tc

from .models import logits_and_hidden, per_sample_loss

__all__ = ["alignment_gradients", "alignment_stats", "domain_gradients", "validation_gradient"]


def _segment_sum(data: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    return data.new_zeros((num_segments, *data.shape[1:])).index_add(0, ids.long(), data)


def domain_gradients(module: nn.Module, batch: dict, num_domains: int) -> tuple:
    """Gradient of each domain's mean loss at the module's parameters, vmapped over domains.

    Args:
        module: the model.
        batch: device batch in ``train_batch`` layout: ``M`` consecutive blocks of ``b`` rows.
        num_domains: M.

    Returns:
        ``(grads {name: (M, ...)}, losses (B,), scored (B,))``.
    """
    params = {k: p.detach() for k, p in module.named_parameters()}
    rows, t = batch["tokens"].shape
    per = rows // num_domains
    tokens = batch["tokens"].reshape(num_domains, per, t)
    labels = batch["labels"].reshape(num_domains, per, t)

    def domain_loss(p: dict, tok: torch.Tensor, lab: torch.Tensor) -> tuple:
        loss, n = per_sample_loss(logits_and_hidden(module, p, tok)[0], lab)
        keep = (n > 0).to(loss.dtype)
        return (loss * keep).sum() / keep.sum().clamp_min(1), (loss, n)

    grads, (losses, n) = vmap(grad(domain_loss, has_aux=True), in_dims=(None, 0, 0))(
        params, tokens, labels
    )
    return grads, losses.reshape(rows), n.reshape(rows)


def validation_gradient(module: nn.Module, batch: dict, num_val_domains: int) -> dict:
    """Gradient of ``L_val`` (mean over validation domains of their mean loss)."""
    params = {k: p.detach() for k, p in module.named_parameters()}

    def val_loss(p: dict) -> torch.Tensor:
        loss, n = per_sample_loss(logits_and_hidden(module, p, batch["tokens"])[0], batch["labels"])
        counts = (n > 0).to(loss.dtype)
        stats = tc.domain_stats(
            loss,
            batch["domain"],
            num_val_domains,
            counts=counts,
            checked=False,
            segment_sum=_segment_sum,
        )
        means, present = tc.domain_means(stats)
        return means.sum() / present.sum().clamp_min(1)

    return grad(val_loss)(params)


def alignment_gradients(module: nn.Module, train: dict, val: dict, m: int, v: int) -> tuple:
    """Per-domain and validation gradients of the alignment signal.

    Args:
        module: the proxy (unwrapped).
        train: device batch of ``m`` consecutive per-domain blocks.
        val: device validation batch over ``v`` validation domains.
        m: training domains.
        v: validation domains.

    Returns:
        ``(grads {name: (M, ...)}, validation grad {name: (...)}, losses (B,), scored (B,))``.
    """
    grads, losses, n = domain_gradients(module, train, m)
    return grads, validation_gradient(module, val, v), losses, n


def alignment_stats(grads: dict, val_grad: dict) -> tc.AlignmentStats:
    """``<g_m, g_val>`` ``(M,)``, ``||g_m||`` ``(M,)`` and ``||g_val||`` ``()`` over all parameters.

    Args:
        grads: per-domain gradients ``{name: (M, ...)}``.
        val_grad: the validation gradient ``{name: (...)}``.
    """
    scores = sum(g.flatten(1) @ val_grad[k].flatten() for k, g in grads.items())
    squares = sum(g.flatten(1).square().sum(1) for g in grads.values())
    val_squares = sum(g.square().sum() for g in val_grad.values())
    return tc.AlignmentStats(scores, squares.sqrt(), val_squares.sqrt())
