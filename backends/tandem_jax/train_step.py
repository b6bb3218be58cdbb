"""The JAX ``TwinTrainer``: jitted steps of the proxy u and the reference w (SPEC 1.3).

Each step (probe: both twins; free; twin evaluation + mixture update; DoReMi; DoGE) is ONE jitted
function of arrays. Batches enter with an explicit ``jax.device_put`` (sharded over a ``data`` mesh
axis when several devices are given, the statistics then reduced by the compiler), and nothing is
read back until the driver logs: the loop runs under ``jax.transfer_guard("disallow")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import tandem_core as tc
from tandem_core.config import ConfigError, TrainConfig

from .adapt_step import AdaptSteps
from .grads import doge_gradients
from .models import per_sample_loss, token_losses
from .optim import make_optimizer

__all__ = ["TwinTrainer"]


def segment_sum(data: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
    """``jax.ops.segment_sum`` with the core's ``(data, ids, M)`` signature."""
    return jax.ops.segment_sum(data, ids, num_segments=num_segments)


def _stats(losses: jax.Array, scored: jax.Array, ids: jax.Array, m: int) -> tc.DomainStats:
    counts = (scored > 0).astype(losses.dtype)
    return tc.domain_stats(losses, ids, m, counts=counts, checked=False, segment_sum=segment_sum)


def _counts(batch: dict, m: int) -> jax.Array:
    """Per-domain rows with a scored label in the WHOLE batch: the objective's denominators."""
    scored = (batch["labels"] != tc.IGNORE_INDEX).any(-1).astype(jnp.float32)
    return segment_sum(scored, batch["domain"], m)


def _micro(batch: Any, parts: int) -> Any:
    """``(B, ...)`` leaves to ``(parts, B / parts, ...)``: micro-batches for ``lax.scan``."""

    def cut(a: jax.Array) -> jax.Array:
        if a.shape[0] % parts:
            raise ValueError(
                f"a batch of {a.shape[0]} rows cannot be cut into {parts} micro-batches"
            )
        return a.reshape(parts, a.shape[0] // parts, *a.shape[1:])

    return jax.tree.map(cut, batch)


def _accumulate(fn: Any, params: Any, batch: dict, parts: int) -> tuple:
    """``value_and_grad`` of ``fn(params, micro) -> (loss, aux)`` summed over micro-batches."""
    grad_fn = jax.value_and_grad(fn, has_aux=True)
    if parts == 1:
        return grad_fn(params, batch)
    micro = _micro(batch, parts)

    def body(carry: Any, mb: dict) -> tuple:
        return jax.tree.map(jnp.add, carry, grad_fn(params, mb)), None

    first = jax.tree.map(lambda a: a[0], micro)
    out, _ = jax.lax.scan(body, grad_fn(params, first), jax.tree.map(lambda a: a[1:], micro))
    return out


def _scan_sum(fn: Any, batch: dict, parts: int) -> Any:
    """``fn(micro_batch)`` summed over micro-batches (no gradients: evaluation statistics)."""
    if parts == 1:
        return fn(batch)
    micro = _micro(batch, parts)
    first = fn(jax.tree.map(lambda a: a[0], micro))

    def body(carry: Any, mb: dict) -> tuple:
        return jax.tree.map(jnp.add, carry, fn(mb)), None

    return jax.lax.scan(body, first, jax.tree.map(lambda a: a[1:], micro))[0]


def _apply(
    tx: optax.GradientTransformation, params: Any, opt: Any, grads: Any, exact: bool = True
) -> tuple:
    """Optimizer step; one with a non-finite gradient is skipped and reported.

    Skipped: parameters and optimizer state keep their values (mirrors the torch trainer). The
    gradient is also zeroed so that no NaN flows through the optimizer's arithmetic; with
    ``exact=False`` (``nonfinite="zero"``) that is all, and momentum and decay still apply.
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


def _count(counters: tuple, bad: jax.Array) -> tuple:
    step, nonfinite, first = counters
    first = jnp.where(bad & (first < 0), step, first)
    return step + 1, nonfinite + bad.astype(nonfinite.dtype), first


class TwinTrainer(AdaptSteps):
    """JAX engine of ``tandem_core.MixtureRun``: twins as equinox pytrees, optax optimizers.

    ADAPT's weighted step and anchor refresh come from ``AdaptSteps`` (``adapt_step.py``).

    Args:
        model: the proxy u, an equinox module ``model(tokens) -> (logits, hidden)``.
        config: the training configuration.
        num_domains: M.
        num_val_domains: validation domains (default M).
        devices: devices of the ``data`` mesh axis (default: one device, no sharding).
        optimizer: ``f(cfg, lr) -> optax.GradientTransformation`` (default from ``config``).
    """

    def __init__(
        self,
        model: eqx.Module,
        config: TrainConfig,
        num_domains: int,
        *,
        num_val_domains: int | None = None,
        devices: list | None = None,
        optimizer: Callable[..., optax.GradientTransformation] | None = None,
    ) -> None:
        if config.method == "doge" and (config.sampling != "reweight" or config.accumulate > 1):
            raise ConfigError(
                "method='doge' needs sampling='reweight' (per-domain sub-batches) and accumulate=1"
            )
        if config.fsdp:
            raise ConfigError("train.fsdp is for the torch backend; JAX shards with run.devices")
        self.exact_skip = config.nonfinite != "zero"
        if config.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("dtype='float64' needs jax_enable_x64 (JAX_ENABLE_X64=1)")
        self.cfg, self.m, self.v = config, num_domains, num_val_domains or num_domains
        self.dtype = jnp.dtype(config.dtype)
        self.mesh = Mesh(np.asarray(devices), ("data",)) if devices and len(devices) > 1 else None
        params, self.static = eqx.partition(model, eqx.is_inexact_array)
        params = jax.tree.map(lambda a: a.astype(self.dtype), params)
        self.pu = self.pw = self._replicate(params)
        make = optimizer or make_optimizer
        self.tx_u, self.tx_w = (
            make(config, config.lr),
            make(config, config.lr_reference or config.lr),
        )
        self.ou = self.ow = self.tx_u.init(self.pu)
        zero = jnp.zeros((), jnp.int32)
        self.counters_ = (zero, zero, zero - 1)
        self.xp = jnp
        self._probe = jax.jit(self._probe_impl)
        self._free = jax.jit(self._free_impl, static_argnames=("reference",))
        self._twin = jax.jit(self._twin_impl, static_argnames=("update",))
        self._doremi = jax.jit(self._doremi_impl, static_argnames=("update",))
        self._doge = jax.jit(self._doge_impl, static_argnames=("update",))
        self._eval = jax.jit(self._losses)
        self._update = jax.jit(
            lambda state, stats, update: update(state, stats), static_argnames=("update",)
        )
        self.vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None)

    # ------------------------------------------------------------------ placement
    def _replicate(self, tree: Any) -> Any:
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def _device_batch(self, batch: dict) -> dict:
        spec = None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec("data"))
        return {k: jax.device_put(np.asarray(v), spec) for k, v in batch.items()}

    def to_device_tree(self, tree: Any) -> Any:
        """Put a nest of host arrays on the device (replicated over the mesh), dtypes kept."""
        return self._replicate(jax.tree.map(lambda a: jax.device_put(np.asarray(a)), tree))

    # ------------------------------------------------------------------ pure steps
    def _losses(self, params: Any, tokens: jax.Array, labels: jax.Array) -> tuple:
        logits, _ = eqx.combine(params, self.static)(tokens)
        return per_sample_loss(logits, labels)

    def _twin_losses(self, pu: Any, pw: Any, tokens: jax.Array, labels: jax.Array) -> tuple:
        if not self.cfg.fuse_twins:
            (lu, n), (lw, _) = self._losses(pu, tokens, labels), self._losses(pw, tokens, labels)
            return lu, lw, n
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), pu, pw)
        both, n = jax.vmap(self._losses, in_axes=(0, None, None))(stacked, tokens, labels)
        return both[0], both[1], n[0]

    def _probe_impl(self, pu, ou, pw, ow, counters, train, val, alpha) -> tuple:
        counts, vcounts, gamma = _counts(train, self.m), _counts(val, self.v), self.cfg.gamma
        present = (vcounts > 0).astype(vcounts.dtype)
        val_weights = present / jnp.maximum(present.sum(), 1)

        def total(pair: tuple, mb: tuple) -> tuple:
            tb, vb = mb
            lu, lw, n = self._twin_losses(pair[0], pair[1], tb["tokens"], tb["labels"])
            su, sw = _stats(lu, n, tb["domain"], self.m), _stats(lw, n, tb["domain"], self.m)
            lv, nv = self._losses(pair[1], vb["tokens"], vb["labels"])
            val_sums = _stats(lv, nv, vb["domain"], self.v).sums
            loss_w = tc.weighted_objective(val_sums, vcounts, val_weights)
            loss_w = loss_w + gamma * tc.weighted_objective(sw.sums, counts, alpha)
            return tc.weighted_objective(su.sums, counts, alpha) + loss_w, su

        (_, su), (gu, gw) = _accumulate(total, (pu, pw), (train, val), self.cfg.accumulate)
        pu, ou, bad_u = _apply(self.tx_u, pu, ou, gu, self.exact_skip)
        pw, ow, bad_w = _apply(self.tx_w, pw, ow, gw, self.exact_skip)
        return pu, ou, pw, ow, _count(counters, bad_u | bad_w), su

    def _free_impl(self, params, opt, counters, train, alpha, *, reference: bool) -> tuple:
        counts = _counts(train, self.m)

        def loss(p: Any, tb: dict) -> tuple:
            stats = _stats(*self._losses(p, tb["tokens"], tb["labels"]), tb["domain"], self.m)
            return tc.weighted_objective(stats.sums, counts, alpha), stats

        (_, stats), grads = _accumulate(loss, params, train, self.cfg.accumulate)
        params, opt, bad = _apply(
            self.tx_w if reference else self.tx_u, params, opt, grads, self.exact_skip
        )
        return params, opt, _count(counters, bad), stats

    def _twin_impl(self, pu, pw, batch, state, *, update: Callable) -> tuple:
        def stats(mb: dict) -> tc.TwinStats:
            lu, lw, n = self._twin_losses(pu, pw, mb["tokens"], mb["labels"])
            ids = mb["domain"]
            return tc.TwinStats(_stats(lu, n, ids, self.m), _stats(lw, n, ids, self.m))

        twin = _scan_sum(stats, batch, self.cfg.accumulate)
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), pu, pw))
        info = {"delta": tc.twin_delta(twin)[0], "twin_distance": jnp.sqrt(sum(diffs))}
        return update(state, twin), info

    def _doremi_impl(self, pu, ou, pw, counters, batch, state, *, update: Callable | None) -> tuple:
        def tokens_of(p: Any, mb: dict) -> jax.Array:
            return token_losses(eqx.combine(p, self.static)(mb["tokens"])[0], mb["labels"])

        def excess(mb: dict) -> tc.DomainStats:
            keep = mb["labels"] != tc.IGNORE_INDEX
            return tc.excess_loss_stats(
                tokens_of(pu, mb),
                tokens_of(pw, mb),
                keep,
                mb["domain"],
                self.m,
                checked=False,
                segment_sum=segment_sum,
            )

        if update is not None:  # the whole step's statistics first: never a stale mixture
            state = update(state, _scan_sum(excess, batch, self.cfg.accumulate))
        alpha = state.alpha if self.cfg.sampling == "reweight" else None
        counts = _counts(batch, self.m)

        def loss(p: Any, mb: dict) -> tuple:
            tok = tokens_of(p, mb)
            n = (mb["labels"] != tc.IGNORE_INDEX).sum(-1)
            per = tok.sum(-1) / jnp.maximum(n, 1).astype(tok.dtype)
            stats = _stats(per, n, mb["domain"], self.m)
            return tc.weighted_objective(stats.sums, counts, alpha), stats

        (_, stats), grads = _accumulate(loss, pu, batch, self.cfg.accumulate)
        pu, ou, bad = _apply(self.tx_u, pu, ou, grads, self.exact_skip)
        return pu, ou, _count(counters, bad), state, stats

    def _doge_impl(self, pu, ou, counters, train, val, state, *, update: Callable | None) -> tuple:
        grads, val_grad, losses, n = doge_gradients(self._losses, pu, train, val, self.m, self.v)
        scores = sum(
            jax.tree.leaves(
                jax.tree.map(lambda g, v: g.reshape(self.m, -1) @ v.reshape(-1), grads, val_grad)
            )
        )
        if update is not None:
            state = update(state, scores)
        combined = jax.tree.map(
            lambda g: jnp.tensordot(state.alpha.astype(g.dtype), g, axes=1), grads
        )
        pu, ou, bad = _apply(self.tx_u, pu, ou, combined, self.exact_skip)
        return pu, ou, _count(counters, bad), state, _stats(losses, n, train["domain"], self.m)

    # ------------------------------------------------------------------ engine API
    def init_mixture(self, transform: tc.MixtureTransform, num_domains: int) -> tc.MixtureState:
        """``transform.init`` as JAX arrays in the training dtype."""
        return self._replicate(transform.init(num_domains, xp=jnp, dtype=self.dtype))

    def sync(self) -> None:
        """``w <- u``: parameters and optimizer state (immutable arrays: sharing them is a copy)."""
        self.pw, self.ow = self.pu, self.ou

    def probe(self, train: dict, val: dict, alpha: jax.Array | None) -> tc.DomainStats:
        """Both twins' probing step, jitted as one function."""
        out = self._probe(
            self.pu,
            self.ou,
            self.pw,
            self.ow,
            self.counters_,
            self._device_batch(train),
            self._device_batch(val),
            alpha,
        )
        self.pu, self.ou, self.pw, self.ow, self.counters_, stats = out
        return stats

    def free(self, train: dict, alpha: jax.Array | None, *, model: str = "proxy") -> tc.DomainStats:
        """One jitted step of u (or of w, DoReMi's reference phase)."""
        reference = model == "reference"
        params, opt = (self.pw, self.ow) if reference else (self.pu, self.ou)
        params, opt, self.counters_, stats = self._free(
            params, opt, self.counters_, self._device_batch(train), alpha, reference=reference
        )
        if reference:
            self.pw, self.ow = params, opt
        else:
            self.pu, self.ou = params, opt
        return stats

    def twin_update(self, batch: dict, state: tc.MixtureState, update: Callable) -> tuple:
        """Twin evaluation, Delta and the mixture update in one jitted function."""
        return self._twin(self.pu, self.pw, self._device_batch(batch), state, update=update)

    def twin_distance(self) -> jax.Array:
        """``||u - w||`` over all parameters."""
        return jnp.sqrt(
            sum(
                jax.tree.leaves(
                    jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), self.pu, self.pw)
                )
            )
        )

    def mixture_update(
        self, state: tc.MixtureState, stats: Any, update: Callable
    ) -> tc.MixtureState:
        """``update(state, stats)`` jitted (no implicit host-to-device transfer of constants)."""
        return self._update(state, stats, update=update)

    def doremi_step(self, train: dict, state: tc.MixtureState, update: Callable | None) -> tuple:
        """DoReMi Alg. 1 in one jitted function (reference w frozen)."""
        out = self._doremi(
            self.pu,
            self.ou,
            self.pw,
            self.counters_,
            self._device_batch(train),
            state,
            update=update,
        )
        self.pu, self.ou, self.counters_, state, stats = out
        return state, stats

    def doge_step(
        self, train: dict, val: dict, state: tc.MixtureState, update: Callable | None
    ) -> tuple:
        """DoGE in one jitted function (per-domain gradients by ``jax.vmap(jax.grad)``)."""
        out = self._doge(
            self.pu,
            self.ou,
            self.counters_,
            self._device_batch(train),
            self._device_batch(val),
            state,
            update=update,
        )
        self.pu, self.ou, self.counters_, state, stats = out
        return state, stats

    def evaluate(self, batches: list[dict]) -> np.ndarray:
        """Proxy loss per batch (mean over samples with scored tokens): host float64 ``(len,)``."""
        out = []
        for batch in batches:
            b = self._device_batch(batch)
            loss, n = self._eval(self.pu, b["tokens"], b["labels"])
            keep = (n > 0).astype(loss.dtype)
            out.append((loss * keep).sum() / jnp.maximum(keep.sum(), 1))
        return np.asarray(jnp.stack(out), dtype=np.float64) if out else np.zeros(0)

    def counters(self) -> dict[str, jax.Array]:
        """Device counters: steps with a non-finite loss, and the first such step (-1: none)."""
        return {"nonfinite": self.counters_[1], "first_nonfinite": self.counters_[2]}

    def proxy_model(self) -> eqx.Module:
        """The proxy u as an equinox module."""
        return eqx.combine(self.pu, self.static)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Both models' and optimizers' leaves (the tree structure comes from this trainer)."""
        return {
            "proxy": jax.tree.leaves(self.pu),
            "reference": jax.tree.leaves(self.pw),
            "opt_u": jax.tree.leaves(self.ou),
            "opt_w": jax.tree.leaves(self.ow),
            "counters": list(self.counters_),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` into this trainer's tree structures."""

        def load(like: Any, leaves: list) -> Any:
            treedef = jax.tree.structure(like)
            if treedef.num_leaves != len(leaves):
                raise ValueError(
                    f"checkpoint has {len(leaves)} leaves, the trainer expects {treedef.num_leaves}"
                )
            return self.to_device_tree(jax.tree.unflatten(treedef, [np.asarray(x) for x in leaves]))

        self.pu, self.pw = load(self.pu, state["proxy"]), load(self.pw, state["reference"])
        self.ou, self.ow = load(self.ou, state["opt_u"]), load(self.ow, state["opt_w"])
        self.counters_ = tuple(self.to_device_tree([np.asarray(c) for c in state["counters"]]))

    def predict_logits(self, batch: dict) -> jax.Array:
        """The proxy's logits ``(B, T, V)`` on ``batch["tokens"]``, on device (jitted forward).

        For probes of the predictive distribution, e.g. TaskPGM's pairwise divergences. The
        forward is compiled on first use.
        """
        if "_predict" not in self.__dict__:
            self._predict = jax.jit(lambda p, tokens: eqx.combine(p, self.static)(tokens)[0])
        return self._predict(self.pu, self._device_batch({"tokens": batch["tokens"]})["tokens"])
