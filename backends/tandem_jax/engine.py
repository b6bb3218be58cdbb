"""``JaxEngine``: the ``tandem_core.run.Engine`` of JAX, built on the pure twin functions.

The engine holds a static ``TwinSpec`` and the ``Twins`` pytree (the only state it swaps) and
calls jitted pure functions (``twins.py``, ``signals.py``, ``weighted.py``). Batches enter with
an explicit ``jax.device_put`` per device (``placement.py``), sharded over a ``data`` mesh axis
when several devices are given, on one process or several (each places only its own rows; the
compiler then reduces the statistics), and nothing is read back until the loop logs: the loop
runs under ``jax.transfer_guard("disallow")`` (docs/architecture.md, docs/distributed.md).
With ``backend.checkpoint = "sharded"`` the twins go to orbax (``checkpoint.py``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tandem_core as tc
from tandem_core import ConfigError
from tandem_core.methods import Signal
from tandem_core.run import TrainConfig

from . import checkpoint, signals, twins, weighted
from .optim import make_optimizer
from .options import JaxOptions
from .placement import Placement

__all__ = ["JaxEngine"]


class JaxEngine:
    """The proxy u and the reference w trained with optax, on one device or a data mesh.

    Args:
        model: the proxy u, an equinox module ``model(tokens) -> (logits, hidden | None)``.
        config: the training configuration.
        num_domains: M.
        num_val_domains: validation domains (default M).
        options: the ``[backend]`` table (``fuse_twins``, ``checkpoint``).
        devices: devices of the ``data`` mesh axis, possibly of several processes
            (``placement.mesh_devices``; default: one device, no sharding).
        optimizer: ``f(config, lr) -> optax.GradientTransformation`` (default from ``config``).
    """

    xp = jnp

    def __init__(
        self,
        model: eqx.Module,
        config: TrainConfig,
        num_domains: int,
        *,
        num_val_domains: int | None = None,
        options: JaxOptions | None = None,
        devices: list | None = None,
        optimizer: Callable[..., optax.GradientTransformation] | None = None,
    ) -> None:
        if config.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("dtype='float64' needs jax_enable_x64 (JAX_ENABLE_X64=1)")
        options = options or JaxOptions()
        make = optimizer or make_optimizer
        self.config, self.dtype = config, jnp.dtype(config.dtype)
        self.reweight = config.sampling == "reweight"
        self.checkpoint_format = options.checkpoint  # "npz" | "sharded"
        self.placement = Placement(devices)
        self.mesh = self.placement.mesh
        self.spec, state = twins.make_twins(
            model,
            make(config, config.lr),
            num_domains=num_domains,
            num_val_domains=num_val_domains,
            reference_optimizer=make(config, config.lr_reference or config.lr),
            nonfinite=config.nonfinite,
            accumulate=config.accumulate,
            fuse=options.fuse_twins,
            dtype=config.dtype,
        )
        self.twins = self.placement.replicate(state)
        self.vocab_size = getattr(getattr(model, "cfg", None), "vocab_size", None)
        self._jit = _Compiled(self.spec, self.placement)

    # ------------------------------------------------------------------ placement
    def batch(self, host_batch: dict) -> dict:
        """A host batch on device: rows sharded over the ``data`` axis, dtypes kept.

        In a job of several processes each one places only the rows its devices hold.
        """
        return self.placement.batch(host_batch)

    def to_device(self, tree: Any) -> Any:
        """A nest of host arrays on the device (replicated over the mesh), dtypes kept."""
        return self.placement.replicate(tree)

    def init_mixture(self, transform: tc.MixtureTransform, num_domains: int) -> tc.MixtureState:
        """``transform.init`` as JAX arrays in the training dtype."""
        return self.placement.replicate(transform.init(num_domains, xp=jnp, dtype=self.dtype))

    @property
    def processes(self) -> int:
        """Processes computing this run (those holding devices of the mesh; 1 without one)."""
        return self.placement.processes

    def any_process(self, flag: bool) -> bool:
        """Whether any process passed ``flag`` (every process calls it: one small collective)."""
        if self.placement.processes <= 1:
            return bool(flag)
        flags = self.placement.shard(np.full(self.placement.size, flag))  # ours: local rows
        return bool(self._jit.any(flags))

    # ------------------------------------------------------------------ training
    def sync(self) -> None:
        """``w <- u``: parameters and optimizer state."""
        self.twins = twins.sync(self.twins)

    def probe(
        self, train: dict, val: dict, alpha: jax.Array | None, *, gamma: float
    ) -> tc.DomainStats:
        """Both twins' probing step (one jitted function); u's per-domain train statistics."""
        self.twins, stats = self._jit.probe(
            self.twins, self.batch(train), self.batch(val), alpha, gamma=gamma
        )
        return stats

    def step(
        self,
        train: dict,
        state: tc.MixtureState,
        *,
        model: str = "proxy",
        signal: Signal = Signal.NONE,
        update: Callable | None = None,
        val: dict | None = None,
    ) -> tuple[tc.MixtureState, tc.DomainStats]:
        """One step of ``model``; with ``update`` the mixture is updated first.

        ``signal`` is then measured on the whole batch (``val`` for signals that read one) and
        the step uses the NEW alpha: one jitted function per signal, model and update.
        """
        batch = self.batch(train)
        if signal is Signal.ALIGNMENT and model != "proxy":
            raise ValueError("the alignment signal trains the proxy only")
        if update is None and signal is not Signal.ALIGNMENT:
            alpha = state.alpha if self.reweight else None
            self.twins, stats = self._jit.step(self.twins, batch, alpha, model=model)
            return state, stats
        self.twins, state, stats = self._jit.signal_step(
            self.twins,
            batch,
            None if val is None else self.batch(val),
            state,
            signal=signal,
            update=update,
            model=model,
            reweight=self.reweight,
        )
        return state, stats

    def measure(
        self,
        signal: Signal,
        batch: dict,
        state: tc.MixtureState,
        update: Callable,
        *,
        val: dict | None = None,
    ) -> tuple[tc.MixtureState, dict[str, jax.Array]]:
        """Measure ``signal`` on ``batch`` and update the mixture (one jitted function)."""
        return self._jit.measure(
            self.twins,
            self.batch(batch),
            None if val is None else self.batch(val),
            state,
            signal=signal,
            update=update,
        )

    def weighted_step(
        self, train: dict, alpha: jax.Array | None, scorer: Any, scorer_state: Any
    ) -> tuple:
        """One per-sample weighted proxy step (see ``weighted.weighted_step``)."""
        self.twins, stats, info = self._jit.weighted_step(
            self.twins, self.batch(train), alpha, scorer_state, scorer=scorer
        )
        return stats, info

    def anchor_refresh(self, scorer: Any, scorer_state: Any, batches: list[dict], step: int) -> Any:
        """``scorer.refresh`` with the proxy's pooled hidden states of ``batches`` (no grad)."""
        rows = len(batches[0]["tokens"]) if batches else 0
        if rows % self.placement.size:
            raise ConfigError(
                f"anchor batches of {rows} rows must divide by the {self.placement.size} devices "
                "of the data axis"
            )
        acc = None
        for batch in batches:
            part = self._jit.anchor_sum(self.twins.proxy, self.batch(batch))
            acc = part if acc is None else tc.merge_anchor_sums(acc, part)
        at = self.placement.replicate(np.asarray(step, dtype=np.int32))
        return self._jit.refresh(scorer_state, acc, at, scorer=scorer)

    # ------------------------------------------------------------------ reading
    def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` jitted (``fn`` static: one compilation per function object)."""
        return self._jit.call(fn, *args)

    def evaluate(self, batches: list[dict]) -> np.ndarray:
        """Proxy loss per batch (mean over samples with scored tokens): host float64 ``(len,)``."""
        out = []
        for batch in batches:
            b = self.batch(batch)
            out.append(self._jit.mean_loss(self.twins.proxy, b["tokens"], b["labels"]))
        return np.asarray(jax.device_get(out), dtype=np.float64).reshape(len(out))

    def predict_logits(self, batch: dict) -> jax.Array:
        """The proxy's logits ``(B, T, V)`` on ``batch["tokens"]``, on device (jitted)."""
        tokens = self.batch({"tokens": batch["tokens"]})["tokens"]
        return self._jit.logits(self.twins.proxy, tokens)

    def counters(self) -> dict[str, jax.Array]:
        """Device counters: steps with a non-finite loss, and the first such step (-1: none)."""
        c = self.twins.counters
        return {"nonfinite": c.nonfinite, "first_nonfinite": c.first_nonfinite}

    def proxy_model(self) -> eqx.Module:
        """The proxy u as an equinox module."""
        return twins.proxy_model(self.spec, self.twins)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Both models' and optimizers' leaves and the counters (``checkpoint.state_dict``).

        With ``backend.checkpoint = "sharded"`` only the counters: the models and optimizer
        states go to ``save_sharded``'s orbax shards.
        """
        return checkpoint.state_dict(self.twins, sharded=self.checkpoint_format == "sharded")

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` into this engine's tree structures and placement."""
        self.twins = checkpoint.load_state_dict(self.twins, state, self.to_device)

    def save_sharded(
        self, root: str | os.PathLike, host_state: dict, *, step: int, metadata: dict | None = None
    ) -> Any:
        """``root/step-{step}``: every process's orbax shards plus process 0's ``host_state``."""
        return checkpoint.save(root, step, host_state, self.twins, metadata=metadata)

    def load_sharded(self, root: str | os.PathLike) -> tuple[dict, dict]:
        """Shards of the newest complete checkpoint into the twins; ``(host_state, metadata)``."""
        self.twins, host, meta = checkpoint.load(root, self.twins)
        return host, meta


class _Compiled:
    """One engine's jitted functions, closed over its spec.

    Their executables live and die with the engine: a module-level jit taking the spec as a
    static argument would keep every engine's executables in JAX's cache for the life of the
    process (and a task-mixture job or a benchmark builds many engines).
    """

    def __init__(self, spec: twins.TwinSpec, placement: Placement) -> None:
        def bind(fn: Callable, *static: str, **kw: Any) -> Callable:
            return jax.jit(functools.partial(fn, spec), static_argnames=static, **kw)

        # logits (B, T, V) are read on the host: whole on every process of a multi-process mesh
        gather = {"out_shardings": placement.replicated} if placement.processes > 1 else {}

        self.probe = bind(twins.probe_impl, "gamma")
        self.step = bind(twins.step_impl, "model")
        self.signal_step = bind(signals.signal_step, "signal", "update", "model", "reweight")
        self.measure = bind(signals.measure, "signal", "update")
        self.weighted_step = bind(weighted.weighted_step, "scorer")
        self.anchor_sum = bind(weighted.anchor_sum)
        self.refresh = bind(weighted.refresh, "scorer")
        self.mean_loss = bind(_mean_loss)
        self.logits = bind(_logits, **gather)
        self.call = jax.jit(_call, static_argnums=0)
        self.any = jax.jit(jnp.any)


def _mean_loss(spec: twins.TwinSpec, params: Any, tokens: jax.Array, labels: jax.Array) -> Any:
    """Mean per-sample loss over the samples with scored tokens: a scalar."""
    loss, n = twins.loss(spec, params, tokens, labels)
    keep = (n > 0).astype(loss.dtype)
    return (loss * keep).sum() / jnp.maximum(keep.sum(), 1)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _logits(spec: twins.TwinSpec, params: Any, tokens: jax.Array) -> jax.Array:
    return eqx.combine(params, spec.static)(tokens)[0]
