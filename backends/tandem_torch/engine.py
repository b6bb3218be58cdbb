"""``TorchEngine``: the ``tandem_core.run.Engine`` of the torch backend, built on ``Twins``.

The engine measures ``Signal``s (``signals.py``) and trains the twins; it never sees a method
(docs/architecture.md, "The pieces"). With a mixture update, a step measures the signal on its
whole batch first (every micro-batch and rank), updates the mixture, and trains with the NEW
mixture: never a stale one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import array_api_compat.torch as xp_torch
import numpy as np
import torch
from torch import nn

import tandem_core as tc
from tandem_core.methods import Signal
from tandem_core.run import TrainConfig

from . import checkpoint, sharded, signals, weighted
from .batches import as_tensor
from .distributed import any_rank, world_and_rank
from .models import eval_mode, logits_and_hidden, per_sample_loss
from .options import TorchOptions
from .twins import Twins

__all__ = ["TorchEngine"]


class TorchEngine:
    """The run loop's device side on torch: twins, optimizers, signals, checkpoints.

    Args:
        model: the proxy u (any causal LM ``nn.Module``); the reference w is a deep copy.
        config: the training configuration.
        num_domains: M, the training domains.
        num_val_domains: validation domains (default M).
        options: the ``[backend]`` options (device, compile, fused twins, FSDP).
        optimizer: ``f(params, *, lr) -> torch.optim.Optimizer`` (default from ``config``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        num_domains: int,
        *,
        num_val_domains: int | None = None,
        options: TorchOptions | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        options = options or TorchOptions()
        world, _ = world_and_rank()
        if world > 1 and options.fuse_twins:
            raise tc.ConfigError("backend.fuse_twins is not available under torch.distributed")
        if world > 1 and config.method_record.signal is Signal.ALIGNMENT:
            raise tc.ConfigError(
                f"method={config.method!r} reads per-domain gradient alignment, which runs on "
                "one process (no DDP): set backend.nproc=1"
            )
        self.config = config
        self.checkpoint_format = options.checkpoint  # "npz" | "sharded"
        self.vocab_size = _vocab_size(model)
        self.xp = xp_torch
        self.twins = Twins.from_config(
            model,
            config,
            num_domains=num_domains,
            num_val_domains=num_val_domains,
            optimizer=optimizer,
            fuse=options.fuse_twins,
            compile=options.compile,
            fsdp=options.fsdp,
            device=options.device or None,
        )
        self.m, self.v = self.twins.m, self.twins.v

    # ------------------------------------------------------------------ host <-> device
    def init_mixture(self, transform: tc.MixtureTransform, num_domains: int) -> tc.MixtureState:
        """``transform.init`` on this device, in the training dtype."""
        return transform.init(num_domains, xp=self.xp, dtype=self.twins.dtype, device=self.device)

    def to_device(self, tree: Any) -> Any:
        """A nest of (numpy or torch) arrays on this device, dtypes kept."""
        return tc.tree_map(lambda a: as_tensor(a).to(self.device), tree)

    @property
    def device(self) -> torch.device:
        """The twins' device."""
        return self.twins.device

    @property
    def processes(self) -> int:
        """Ranks computing this run (torch.distributed's world size; 1 without it)."""
        return world_and_rank()[0]

    def any_process(self, flag: bool) -> bool:
        """Whether any rank passed ``flag`` (every rank calls it: one all-reduce)."""
        return any_rank(flag, self.device)

    # ------------------------------------------------------------------ training
    def sync(self) -> None:
        """``w <- u``: parameters and optimizer state."""
        self.twins.sync()

    def probe(
        self, train: dict, val: dict, alpha: torch.Tensor | None, *, gamma: float
    ) -> tc.DomainStats:
        """One step of u on ``L_train`` and of w on ``L_val + gamma * L_train``."""
        return self.twins.probe(train, val, alpha, gamma=gamma)

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
        """One step of ``model``; with ``update``, the signal first updates the mixture."""
        if signal is Signal.ALIGNMENT:  # the measurement's gradients make the step
            return self._aligned_step(train, val, state, update)
        split = self.twins.split(train)
        if update is not None:
            state = update(state, signals.measure(signal, self.twins, split)[0])
        alpha = state.alpha if self.config.sampling == "reweight" else None
        return state, self.twins.step(split, alpha, model=model)

    def weighted_step(
        self, train: dict, alpha: torch.Tensor | None, scorer: Any, scorer_state: Any
    ) -> tuple[tc.DomainStats, tc.WeightedStepInfo]:
        """Per-sample weighted proxy step (``weighted.weighted_step``)."""
        return weighted.weighted_step(self.twins, train, alpha, scorer, scorer_state)

    def anchor_refresh(self, scorer: Any, scorer_state: Any, batches: list[dict], step: int) -> Any:
        """The scorer's anchor refresh from the proxy (``weighted.anchor_refresh``)."""
        return weighted.anchor_refresh(self.twins, scorer, scorer_state, batches, step)

    # ------------------------------------------------------------------ signals
    def measure(
        self,
        signal: Signal,
        batch: dict,
        state: tc.MixtureState,
        update: Callable,
        *,
        val: dict | None = None,
    ) -> tuple[tc.MixtureState, dict[str, torch.Tensor]]:
        """Measure ``signal`` on ``batch`` (no training) and update the mixture."""
        stats, info = signals.measure(signal, self.twins, batch, val=val)
        return update(state, stats), info

    def _aligned_step(
        self, train: dict, val: dict | None, state: tc.MixtureState, update: Callable | None
    ) -> tuple[tc.MixtureState, tc.DomainStats]:
        """Alignment, mixture update, u step on ``sum_m alpha_m g_m`` (``signals.aligned_step``)."""
        return signals.aligned_step(self.twins, train, val, state, update)

    # ------------------------------------------------------------------ evaluation
    def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, eagerly."""
        return fn(*args)

    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> np.ndarray:
        """Proxy loss per batch (mean over samples with scored tokens): host float64 ``(len,)``."""
        out = []
        with eval_mode(self.twins.proxy):
            for batch in batches:
                b = self.twins.batch(batch)
                logits, _ = logits_and_hidden(self.twins.proxy, None, b["tokens"])
                loss, n = per_sample_loss(logits, b["labels"])
                keep = (n > 0).to(loss.dtype)
                out.append((loss * keep).sum() / keep.sum().clamp_min(1))
        return torch.stack(out).double().cpu().numpy() if out else np.zeros(0)

    @torch.no_grad()
    def predict_logits(self, batch: dict) -> torch.Tensor:
        """The proxy's logits ``(B, T, V)`` on ``batch["tokens"]`` (eval mode, no grad)."""
        tokens = self.twins.batch({"tokens": batch["tokens"]})["tokens"]
        with eval_mode(self.twins.proxy):
            logits, _ = logits_and_hidden(self.twins.proxy, None, tokens)
        return logits

    def counters(self) -> dict[str, torch.Tensor]:
        """Device counters: ``nonfinite`` steps and the ``first_nonfinite`` step (-1: none)."""
        return self.twins.counters()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Both models, both optimizer states, the counters and torch's RNG state.

        With ``backend.checkpoint = "sharded"`` only the counters and the RNG state: the models
        and optimizers go to ``save_sharded``'s shards.
        """
        if self.checkpoint_format == "sharded":
            return checkpoint.host_state_dict(self.twins)
        return checkpoint.state_dict(self.twins)

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may be numpy)."""
        checkpoint.load_state_dict(self.twins, state)

    def save_sharded(
        self, root: str | os.PathLike, host_state: dict, *, step: int, metadata: dict | None = None
    ) -> Any:
        """``root/step-{step}``: each rank's shards plus rank 0's ``host_state`` (every rank)."""
        return sharded.save(root, step, host_state, self.twins, metadata=metadata)

    def load_sharded(self, root: str | os.PathLike) -> tuple[dict, dict]:
        """Shards of the newest complete checkpoint into the twins; ``(host_state, metadata)``."""
        return sharded.load(root, self.twins)


def _vocab_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None)
