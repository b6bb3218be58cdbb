"""Per-sample losses of the twins: through their DDP / FSDP wrappers, fused by vmap, or compiled.

Fusing evaluates u and w in one ``torch.func.vmap`` over their stacked parameters (one kernel
launch per layer for both twins; eager attention, no dropout). ``torch.compile`` wraps each loss
function once (``dynamic=False``: one graph per batch shape).
"""

from __future__ import annotations

import torch
from torch import nn

import tandem_core as tc

from .batches import domain_stats
from .models import logits_and_hidden, per_sample_loss

__all__ = ["TwinLosses"]


class TwinLosses:
    """The loss functions of a pair of twins.

    Args:
        calls: ``{"proxy": module, "reference": module}``, the modules the forwards go through
            (wrappers included).
        fuse: twin losses by ``vmap`` over the stacked parameters (unwrapped modules only).
        compile: ``torch.compile`` every loss function.
    """

    def __init__(self, calls: dict[str, nn.Module], *, fuse: bool, compile: bool) -> None:
        self.calls = calls
        self.sample = self._sample
        self.twin = self._fused if fuse else self._pair
        self.hidden = self._hidden
        if compile:
            self.sample = torch.compile(self.sample, dynamic=False)
            self.twin = torch.compile(self.twin, dynamic=False)
            self.hidden = torch.compile(self.hidden, dynamic=False)

    def _sample(self, which: str, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """``(loss (B,), scored (B,))`` of one twin."""
        logits, _ = logits_and_hidden(self.calls[which], None, tokens)
        return per_sample_loss(logits, labels)

    def _hidden(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """The proxy's ``(loss (B,), scored (B,), hidden (B, T, H) | None)``, one forward."""
        logits, hidden = logits_and_hidden(self.calls["proxy"], None, tokens)
        loss, n = per_sample_loss(logits, labels)
        return loss, n, hidden

    def _pair(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """``(loss_u (B,), loss_w (B,), scored (B,))``, one forward per twin."""
        lu, n = self.sample("proxy", tokens, labels)
        lw, _ = self.sample("reference", tokens, labels)
        return lu, lw, n

    def _fused(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """``(loss_u (B,), loss_w (B,), scored (B,))`` from one vmapped forward."""
        proxy, reference = self.calls["proxy"], self.calls["reference"]
        pu, pw = dict(proxy.named_parameters()), dict(reference.named_parameters())
        stacked = {k: torch.stack([pu[k], pw[k]]) for k in pu}

        def one(params: dict) -> torch.Tensor:
            return per_sample_loss(logits_and_hidden(proxy, params, tokens)[0], labels)[0]

        both = torch.func.vmap(one)(stacked)
        return both[0], both[1], (labels != tc.IGNORE_INDEX).sum(-1)

    def val_objective(self, val: dict, counts: torch.Tensor, v: int) -> torch.Tensor:
        """``L_val`` of the reference: the mean over present validation domains of their means.

        Args:
            val: a validation micro-batch on device (ids over ``v`` domains).
            counts: ``(V,)`` the whole validation batch's counts per domain.
            v: validation domains.
        """
        lv, nv = self.sample("reference", val["tokens"], val["labels"])
        sums = domain_stats(lv, nv, val["domain"], v).sums
        present = (counts > 0).to(sums.dtype)
        return tc.weighted_objective(sums, counts, present / present.sum().clamp_min(1))
