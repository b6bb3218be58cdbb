"""ADAPT steps of the JAX ``TwinTrainer`` (SPEC 2.3): weighted proxy step, anchor refresh.

The weighted step is ONE jitted function: the training forward's last hidden states, under
``stop_gradient``, give the weights, so ADAPT costs no extra forward. The anchor refresh is a
jitted forward per anchor batch plus a jitted ``refresh``. Arrays enter with an explicit
``device_put``, so the loop stays legal under ``jax.transfer_guard("disallow")``. Mirrors
``tandem_torch.adapt_step``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import tandem_core as tc
from tandem_core.config import ConfigError

from .models import per_sample_loss

__all__ = ["AdaptSteps"]


def _need_hidden(hidden: Any) -> jax.Array:
    """Checked while tracing (shapes only): a model without hidden states cannot run ADAPT."""
    if hidden is None or hidden.ndim != 3:
        raise ConfigError(
            "the model does not return hidden states (B, T, H): ADAPT needs a model returning "
            "(logits, hidden)"
        )
    return hidden


def _accumulate_rows(fn: Any, params: Any, batch: dict, parts: int) -> tuple:
    """``value_and_grad`` of ``fn(params, micro) -> (loss, (summed, rows))`` over micro-batches.

    The loss, the ``summed`` aux and the gradients add up; the ``rows`` aux (leaves ``(b, ...)``)
    is concatenated back to the batch's row order ``(B, ...)``.
    """
    from .train_step import _micro

    grad_fn = jax.value_and_grad(fn, has_aux=True)
    if parts == 1:
        return grad_fn(params, batch)
    micro = _micro(batch, parts)
    (loss, (summed, rows)), grads = grad_fn(params, jax.tree.map(lambda a: a[0], micro))

    def body(carry: Any, mb: dict) -> tuple:
        (l_mb, (s_mb, r_mb)), g_mb = grad_fn(params, mb)
        return jax.tree.map(jnp.add, carry, (l_mb, s_mb, g_mb)), r_mb

    rest = jax.tree.map(lambda a: a[1:], micro)
    (loss, summed, grads), more = jax.lax.scan(body, (loss, summed, grads), rest)
    rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b.reshape(-1, *b.shape[2:])]), rows, more)
    return (loss, (summed, rows)), grads


class AdaptSteps:
    """Mixin of ``TwinTrainer``: ``weighted_free`` and ``adapt_refresh`` (see ``MixtureRun``)."""

    def _jitted(self, name: str, fn: Any, static: tuple[str, ...] = ()) -> Any:
        cache = self.__dict__.setdefault("_adapt_jits", {})
        if name not in cache:
            cache[name] = jax.jit(fn, static_argnames=static)
        return cache[name]

    def _weighted_impl(self, params, opt, counters, train, alpha, state, *, transform) -> tuple:
        from .train_step import _apply, _count, _counts, _stats

        counts = _counts(train, self.m)

        def loss(p: Any, tb: dict) -> tuple:
            logits, hidden = eqx.combine(p, self.static)(tb["tokens"])
            per, n = per_sample_loss(logits, tb["labels"])
            if "score" in tb:
                scores = tb["score"].astype(per.dtype)
            else:
                mask = tc.adapt_mask(tb["labels"])
                hidden = jax.lax.stop_gradient(_need_hidden(hidden)).astype(self.dtype)
                scores = transform.scores(state, hidden, mask).astype(per.dtype)
            w = jax.lax.stop_gradient(transform.gate(scores))
            ids = tb["domain"]
            objective = tc.weighted_objective(_stats(w * per, n, ids, self.m).sums, counts, alpha)
            scored = (n > 0).astype(w.dtype)
            summed = (_stats(per, n, ids, self.m), _stats(w * scored, n, ids, self.m))
            return objective, (summed, (w, jax.lax.stop_gradient(scores)))

        (_, ((stats, per_domain), (w, s))), grads = _accumulate_rows(
            loss, params, train, self.cfg.accumulate
        )
        params, opt, bad = _apply(self.tx_u, params, opt, grads, self.exact_skip)
        return params, opt, _count(counters, bad), stats, tc.AdaptStepInfo(w, s, per_domain)

    def weighted_free(self, train: dict, alpha: Any, transform: Any, state: Any) -> tuple:
        """One ADAPT-weighted step of the proxy u, jitted (see ``tandem_torch.adapt_step``).

        Args:
            train: host batch; an optional float ``score`` ``(B,)`` column replaces the ADAPT
                cosine (ADAPT-BM25).
            alpha: the mixture ``(M,)``, or ``None`` (batch sampled in proportion).
            transform: the ``AdaptTransform`` (static: one compilation per transform object).
            state: the ``AdaptState`` (anchor centroid); unused with a ``score`` column.

        Returns:
            ``(DomainStats of the unweighted losses, AdaptStepInfo)``, on device.
        """
        step = self._jitted("weighted", self._weighted_impl, ("transform",))
        out = step(
            self.pu,
            self.ou,
            self.counters_,
            self._device_batch(train),
            alpha,
            state,
            transform=transform,
        )
        self.pu, self.ou, self.counters_, stats, info = out
        return stats, info

    def _anchor_impl(self, params: Any, batch: dict) -> tc.AnchorSum:
        _, hidden = eqx.combine(params, self.static)(batch["tokens"])
        mask = tc.adapt_mask(batch["labels"])
        phi = tc.pool_hidden(_need_hidden(hidden).astype(self.dtype), mask)
        return tc.anchor_sum(phi, jnp.any(mask, -1))

    def _refresh_impl(self, state: Any, acc: tc.AnchorSum, step: Any, *, transform: Any) -> Any:
        if state is None:
            state = transform.init(acc.total.shape[0], xp=jnp, dtype=self.dtype)
        return transform.refresh(state, acc, step)

    def adapt_refresh(self, transform: Any, state: Any, batches: list[dict], step: int) -> Any:
        """Anchor centroid of the current proxy (forward only), then ``transform.refresh``."""
        rows = len(batches[0]["tokens"]) if batches else 0
        if self.mesh is not None and rows % self.mesh.size:
            raise ConfigError(
                f"adapt_anchor_batch={rows} must be a multiple of the {self.mesh.size} devices "
                "of the data axis"
            )
        forward = self._jitted("anchor", self._anchor_impl)
        acc = None
        for batch in batches:
            part = forward(self.pu, self._device_batch(batch))
            acc = part if acc is None else tc.merge_anchor_sums(acc, part)
        at = self._replicate(jax.device_put(np.asarray(step, dtype=np.int32)))
        refresh = self._jitted("refresh", self._refresh_impl, ("transform",))
        return refresh(state, acc, at, transform=transform)
