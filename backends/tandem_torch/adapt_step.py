"""ADAPT steps of the torch ``TwinTrainer`` (SPEC 2.3): weighted proxy step, anchor refresh.

The weighted step reuses the training forward's last hidden states (detached: the weights are
constants for the optimiser), so ADAPT costs no extra forward; the anchor refresh is a forward
only, in eval mode and under ``no_grad``. Nothing is read on the host. Mirrors
``tandem_jax.adapt_step``.
"""

from __future__ import annotations

from typing import Any

import torch

import tandem_core as tc
from tandem_core.config import ConfigError

from .models import logits_and_hidden, per_sample_loss

__all__ = ["AdaptSteps"]


def _need_hidden(hidden: Any, module: Any) -> torch.Tensor:
    if hidden is None or hidden.ndim != 3:
        raise ConfigError(
            f"{type(module).__name__} does not return hidden states (B, T, H): ADAPT needs "
            "(logits, hidden) from the model (or a Hugging Face output with hidden_states)"
        )
    return hidden


class AdaptSteps:
    """Mixin of ``TwinTrainer``: ``weighted_free`` and ``adapt_refresh`` (see ``MixtureRun``)."""

    def _hidden_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """The proxy's training forward: ``(loss (B,), scored (B,), hidden (B, T, H) | None)``."""
        module = self._calls["proxy"]
        logits, hidden = logits_and_hidden(module, None, tokens)
        loss, n = per_sample_loss(logits, labels)
        return loss, n, hidden

    def _sample_weights(
        self, batch: dict, hidden: torch.Tensor | None, transform: Any, state: Any, dtype: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w, s)`` ``(B,)``: the gate of the batch's ``score`` column or of the ADAPT cosine."""
        if "score" in batch:
            scores = batch["score"].to(dtype)
        else:
            mask = tc.adapt_mask(batch["labels"])
            hidden = _need_hidden(hidden, self.proxy).detach().to(self.dtype)
            scores = transform.scores(state, hidden, mask).to(dtype)
        return transform.gate(scores).detach(), scores

    def weighted_free(
        self, train: dict, alpha: torch.Tensor | None, transform: Any, state: Any
    ) -> tuple:
        """One ADAPT-weighted step of the proxy u (SPEC 2.3, ``MixtureRun``'s objective).

        Per micro-batch: ``sum_m alpha_m sum_{i in m} w_i l_i / N_m`` with the whole batch's
        counts ``N_m``, so accumulation and DDP equal one big batch (the gate is per sample).

        Args:
            train: host batch; an optional float ``score`` ``(B,)`` column replaces the ADAPT
                cosine (ADAPT-BM25).
            alpha: the mixture ``(M,)`` on device, or ``None`` (batch sampled in proportion).
            transform: the ``AdaptTransform`` (its ``scores`` and ``gate``).
            state: the ``AdaptState`` (anchor centroid); unused with a ``score`` column.

        Returns:
            ``(DomainStats of the unweighted losses, AdaptStepInfo)``, on device.
        """
        parts, counts = self._parts(train, self.m)
        stats = info = None
        for i, tb in enumerate(parts):
            loss, n, hidden = self._hidden_step(tb["tokens"], tb["labels"])
            w, s = self._sample_weights(tb, hidden, transform, state, loss.dtype)
            ids = tb["domain"]
            weighted = self._stats(w * loss, n, ids, self.m)
            self._backward(tc.weighted_objective(weighted.sums, counts, alpha), i == len(parts) - 1)
            scored = (n > 0).to(w.dtype)
            part = tc.AdaptStepInfo(w, s.detach(), self._stats(w * scored, n, ids, self.m))
            stats = _merge(stats, self._stats(loss.detach(), n, ids, self.m))
            info = tc.merge_step_info(info, part)
        self._step([(self.opt_u, self.proxy)])
        return stats, info

    @torch.no_grad()
    def adapt_refresh(self, transform: Any, state: Any, batches: list[dict], step: int) -> Any:
        """Anchor centroid of the current proxy (eval mode, no grad), then ``transform.refresh``.

        Every rank embeds every anchor batch (no collective; identical centroids). ``state``
        ``None`` starts from ``transform.init`` with the hidden size of the model.
        """
        from .train_step import _eval

        acc = None
        with _eval(self.proxy):
            for batch in batches:
                b = self._device_batch(batch)
                _, hidden = logits_and_hidden(self.proxy, None, b["tokens"])
                hidden = _need_hidden(hidden, self.proxy).to(self.dtype)
                mask = tc.adapt_mask(b["labels"])
                part = tc.anchor_sum(tc.pool_hidden(hidden, mask), mask.any(-1))
                acc = part if acc is None else tc.merge_anchor_sums(acc, part)
        if state is None:
            size = acc.total.shape[0]
            state = transform.init(size, xp=self.xp, dtype=self.dtype, device=self.device)
        return transform.refresh(state, acc, step)


def _merge(acc: Any, stats: Any) -> Any:
    return stats if acc is None else tc.merge_stats(acc, stats)
