"""The torch ``TwinTrainer``: device-side steps of the proxy u and the reference w (SPEC 1.3).

Every step returns device tensors; nothing here reads a value on the host (no ``.item()``), so the
driver's loop runs without synchronisation. Non-finite losses never reach the parameters: their
gradients are zeroed on device and the step is counted (``counters()``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from typing import Any

import array_api_compat.torch as xp_torch
import numpy as np
import torch
from torch import nn

import tandem_core as tc
from tandem_core import tree_map
from tandem_core.config import ConfigError, TrainConfig

from .grads import doge_gradients
from .models import logits_and_hidden, per_sample_loss, token_losses
from .optim import copy_optimizer_state, make_optimizer, optimizer_from_tree, optimizer_to_tree

__all__ = ["TwinTrainer"]


def _segment_sum(data: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    return data.new_zeros((num_segments, *data.shape[1:])).index_add(0, ids.long(), data)


class TwinTrainer:
    """PyTorch engine of ``tandem_core.MixtureRun``: twins, optimizers, per-domain statistics.

    Args:
        model: the proxy u (any causal LM ``nn.Module``; see ``models.logits_and_hidden``). The
            reference w is a deep copy.
        config: the training configuration.
        num_domains: M, the training domains.
        num_val_domains: validation domains (default M).
        device: torch device (default: CUDA if available).
        optimizer: ``f(params, *, lr) -> torch.optim.Optimizer`` (default from ``config``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        num_domains: int,
        *,
        num_val_domains: int | None = None,
        device: str | torch.device | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        if config.method == "doge" and config.sampling != "reweight":
            raise ConfigError("method='doge' needs sampling='reweight' (per-domain sub-batches)")
        self.cfg, self.m = config, num_domains
        self.v = num_val_domains or num_domains
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, config.dtype)
        self.proxy = model.to(self.device, self.dtype)
        self.vocab_size = _vocab_size(model)
        self.reference = copy.deepcopy(self.proxy)
        make = optimizer or partial(make_optimizer, cfg=config)
        self.opt_u = make(self.proxy.parameters(), lr=config.lr)
        self.opt_w = make(self.reference.parameters(), lr=config.lr_reference or config.lr)
        self.xp = xp_torch
        zero = partial(torch.zeros, (), dtype=torch.int64, device=self.device)
        self._step, self._nonfinite = zero(), zero()
        self._first_nonfinite = zero() - 1
        self._losses = self._sample_losses
        self._twin_losses = self._fused_twin_losses if config.fuse_twins else self._pair_losses
        if config.compile:
            self._losses = torch.compile(self._losses, dynamic=False)
            self._twin_losses = torch.compile(self._twin_losses, dynamic=False)

    # ------------------------------------------------------------------ losses
    def _device_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return {
            k: torch.as_tensor(np.asarray(v)).to(self.device, non_blocking=True)
            for k, v in batch.items()
        }

    def _sample_losses(
        self, module: nn.Module, tokens: torch.Tensor, labels: torch.Tensor
    ) -> tuple:
        logits, _ = logits_and_hidden(module, dict(module.named_parameters()), tokens)
        return per_sample_loss(logits, labels)

    def _pair_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        lu, n = self._losses(self.proxy, tokens, labels)
        lw, _ = self._losses(self.reference, tokens, labels)
        return lu, lw, n

    def _fused_twin_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        pu, pw = dict(self.proxy.named_parameters()), dict(self.reference.named_parameters())
        stacked = {k: torch.stack([pu[k], pw[k]]) for k in pu}

        def one(params: dict) -> torch.Tensor:
            return per_sample_loss(logits_and_hidden(self.proxy, params, tokens)[0], labels)[0]

        both = torch.func.vmap(one)(stacked)
        return both[0], both[1], (labels != tc.IGNORE_INDEX).sum(-1)

    def _stats(
        self, losses: torch.Tensor, scored: torch.Tensor, ids: torch.Tensor, m: int
    ) -> tc.DomainStats:
        counts = (scored > 0).to(losses.dtype)
        return tc.domain_stats(
            losses, ids, m, counts=counts, checked=False, segment_sum=_segment_sum
        )

    def _objective(self, stats: tc.DomainStats, alpha: torch.Tensor | None) -> torch.Tensor:
        means, _ = tc.domain_means(stats)
        if alpha is None:  # batch sampled in proportion to alpha: plain mean
            return stats.sums.sum() / stats.counts.sum().clamp_min(1)
        return (alpha.to(means.dtype) * means).sum()

    def _val_objective(self, val: dict) -> torch.Tensor:
        lv, nv = self._losses(self.reference, val["tokens"], val["labels"])
        means, present = tc.domain_means(self._stats(lv, nv, val["domain"], self.v))
        return means.sum() / present.sum().clamp_min(1)  # L_val = mean over validation domains

    def _apply(self, pairs: list[tuple[torch.Tensor, torch.optim.Optimizer, nn.Module]]) -> None:
        """Backward and optimizer steps; non-finite losses get zero gradients (no host sync)."""
        for _, opt, _ in pairs:
            opt.zero_grad(set_to_none=False)
        sum(loss for loss, _, _ in pairs).backward()
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for loss, opt, module in pairs:
            finite = torch.isfinite(loss)
            bad = bad | ~finite
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            for g in grads:
                g.nan_to_num_(0.0, 0.0, 0.0).mul_(finite)
            if self.cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip, foreach=True)
            opt.step()
        self._count(bad)

    def _count(self, bad: torch.Tensor) -> None:
        self._first_nonfinite = torch.where(
            bad & (self._first_nonfinite < 0), self._step, self._first_nonfinite
        )
        self._nonfinite = self._nonfinite + bad.to(torch.int64)
        self._step = self._step + 1

    # ------------------------------------------------------------------ engine API
    def init_mixture(self, transform: tc.MixtureTransform, num_domains: int) -> tc.MixtureState:
        """``transform.init`` on this device, in float32 (float64 with ``dtype="float64"``)."""
        return transform.init(num_domains, xp=self.xp, dtype=self.dtype, device=self.device)

    def sync(self) -> None:
        """``w <- u``: parameters copied in place and a deep copy of the optimizer state."""
        with torch.no_grad():
            for pw, pu in zip(self.reference.parameters(), self.proxy.parameters()):
                pw.copy_(pu)
        copy_optimizer_state(self.opt_u, self.opt_w)

    def probe(self, train: dict, val: dict, alpha: torch.Tensor | None) -> tc.DomainStats:
        """U on ``L_train``; w on ``L_val + gamma * L_train``, on the SAME train batch."""
        tb, vb = self._device_batch(train), self._device_batch(val)
        lu, lw, n = self._twin_losses(tb["tokens"], tb["labels"])
        su, sw = self._stats(lu, n, tb["domain"], self.m), self._stats(lw, n, tb["domain"], self.m)
        loss_w = self._val_objective(vb) + self.cfg.gamma * self._objective(sw, alpha)
        self._apply(
            [
                (self._objective(su, alpha), self.opt_u, self.proxy),
                (loss_w, self.opt_w, self.reference),
            ]
        )
        return _detach(su)

    def free(
        self, train: dict, alpha: torch.Tensor | None, *, model: str = "proxy"
    ) -> tc.DomainStats:
        """One step of u (or of the reference w: DoReMi's reference phase) on the train batch."""
        module, opt = (self.proxy, self.opt_u) if model == "proxy" else (self.reference, self.opt_w)
        tb = self._device_batch(train)
        stats = self._stats(*self._losses(module, tb["tokens"], tb["labels"]), tb["domain"], self.m)
        self._apply([(self._objective(stats, alpha), opt, module)])
        return _detach(stats)

    @torch.no_grad()
    def twin_update(self, batch: dict, state: tc.MixtureState, update: Callable) -> tuple:
        """Per-domain losses of both twins on one batch (eval mode), Delta, mixture update."""
        b = self._device_batch(batch)
        with _eval(self.proxy, self.reference):
            lu, lw, n = self._twin_losses(b["tokens"], b["labels"])
        twin = tc.TwinStats(
            self._stats(lu, n, b["domain"], self.m), self._stats(lw, n, b["domain"], self.m)
        )
        delta, _ = tc.twin_delta(twin)
        return update(state, twin), {"delta": delta, "twin_distance": self.twin_distance()}

    @torch.no_grad()
    def twin_distance(self) -> torch.Tensor:
        """``||u - w||`` over all parameters (device scalar)."""
        diffs = torch._foreach_sub(list(self.proxy.parameters()), list(self.reference.parameters()))
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs)))

    @torch.no_grad()
    def mixture_update(
        self, state: tc.MixtureState, stats: Any, update: Callable
    ) -> tc.MixtureState:
        """``update(state, stats)`` (eager; the core update is cheap and compile-safe)."""
        return update(state, stats)

    def doremi_step(self, train: dict, state: tc.MixtureState, update: Callable | None) -> tuple:
        """DoReMi Alg. 1: clipped excess loss vs the frozen reference w, mixture update, u step."""
        b = self._device_batch(train)
        keep = b["labels"] != tc.IGNORE_INDEX
        with torch.no_grad(), _eval(self.reference):
            ref = token_losses(
                logits_and_hidden(
                    self.reference, dict(self.reference.named_parameters()), b["tokens"]
                )[0],
                b["labels"],
            )
        tok = token_losses(
            logits_and_hidden(self.proxy, dict(self.proxy.named_parameters()), b["tokens"])[0],
            b["labels"],
        )
        if update is not None:
            excess = tc.excess_loss_stats(
                tok.detach(),
                ref,
                keep,
                b["domain"],
                self.m,
                checked=False,
                segment_sum=_segment_sum,
            )
            state = update(state, excess)
        n = keep.sum(-1)
        stats = self._stats(tok.sum(-1) / n.clamp_min(1), n, b["domain"], self.m)
        self._apply(
            [
                (
                    self._objective(
                        stats, state.alpha if self.cfg.sampling == "reweight" else None
                    ),
                    self.opt_u,
                    self.proxy,
                )
            ]
        )
        return state, _detach(stats)

    def doge_step(
        self, train: dict, val: dict, state: tc.MixtureState, update: Callable | None
    ) -> tuple:
        """DoGE: alignment ``W_m = <g_m, g_val>``, mixture update, u step on ``sum alpha_m g_m``."""
        tb, vb = self._device_batch(train), self._device_batch(val)
        grads, val_grad, losses, n = doge_gradients(self.proxy, tb, vb, self.m, self.v)
        scores = sum(g.flatten(1) @ val_grad[k].flatten() for k, g in grads.items())
        if update is not None:
            state = update(state, scores)
        alpha = state.alpha.to(self.dtype)
        for name, p in self.proxy.named_parameters():
            p.grad = torch.einsum("m,m...->...", alpha, grads[name])
        finite = torch.isfinite(scores).all() & torch.isfinite(losses).all()
        for p in self.proxy.parameters():
            p.grad.nan_to_num_(0.0, 0.0, 0.0).mul_(finite)
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.proxy.parameters(), self.cfg.grad_clip, foreach=True)
        self.opt_u.step()
        self._count(~finite)
        return state, _detach(self._stats(losses, n, tb["domain"], self.m))

    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> np.ndarray:
        """Proxy loss per batch (mean over samples with scored tokens): host float64 ``(len,)``."""
        out = []
        with _eval(self.proxy):
            for batch in batches:
                b = self._device_batch(batch)
                loss, n = self._losses(self.proxy, b["tokens"], b["labels"])
                keep = (n > 0).to(loss.dtype)
                out.append((loss * keep).sum() / keep.sum().clamp_min(1))
        return torch.stack(out).double().cpu().numpy() if out else np.zeros(0)

    def counters(self) -> dict[str, torch.Tensor]:
        """Device counters: steps with a non-finite loss, and the first such step (-1: none)."""
        return {"nonfinite": self._nonfinite, "first_nonfinite": self._first_nonfinite}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Both models, both optimizer states, the counters and torch's RNG state."""
        return {
            "proxy": {k: v.detach() for k, v in self.proxy.state_dict().items()},
            "reference": {k: v.detach() for k, v in self.reference.state_dict().items()},
            "opt_u": optimizer_to_tree(self.opt_u),
            "opt_w": optimizer_to_tree(self.opt_w),
            "counters": {
                "step": self._step,
                "nonfinite": self._nonfinite,
                "first": self._first_nonfinite,
            },
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may be numpy)."""
        for module, key in ((self.proxy, "proxy"), (self.reference, "reference")):
            module.load_state_dict(
                {k: torch.as_tensor(np.asarray(v)) for k, v in state[key].items()}
            )
        optimizer_from_tree(self.opt_u, state["opt_u"], self.device)
        optimizer_from_tree(self.opt_w, state["opt_w"], self.device)
        c = {k: self.to_device_tree(v) for k, v in state["counters"].items()}
        self._step, self._nonfinite, self._first_nonfinite = c["step"], c["nonfinite"], c["first"]
        torch.set_rng_state(torch.as_tensor(np.asarray(state["torch_rng"])).to(torch.uint8))

    def to_device_tree(self, tree: Any) -> Any:
        """Move a nest of (numpy or torch) arrays onto this device, dtypes kept."""
        return tree_map(
            lambda a: torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(
                self.device
            ),
            tree,
        )


def _vocab_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None)


def _detach(stats: tc.DomainStats) -> tc.DomainStats:
    return tc.DomainStats(*(None if a is None else a.detach() for a in stats))


class _eval:  # noqa: N801 - a context manager used like a function
    """Put modules in eval mode (no dropout) for a block, restoring their previous mode."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)
