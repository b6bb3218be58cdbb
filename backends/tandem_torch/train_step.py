"""The torch ``TwinTrainer``: device-side steps of the proxy u and the reference w (SPEC 1.3).

Every step returns device tensors; nothing here reads a value on the host (no ``.item()``), so the
driver's loop runs without synchronisation. Non-finite losses never reach the parameters: a step
with a non-finite gradient is skipped on device (parameters and optimizer state unchanged) and
counted (``counters()``).
"""

from __future__ import annotations

import contextlib
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

from .adapt_step import AdaptSteps
from .distributed import all_reduce_sum, full, local, shard_like, world_and_rank, wrap
from .grads import doge_gradients
from .models import logits_and_hidden, per_sample_loss, token_losses
from .optim import copy_optimizer_state, make_optimizer, optimizer_from_tree, optimizer_to_tree

__all__ = ["TwinTrainer"]


def _segment_sum(data: torch.Tensor, ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    return data.new_zeros((num_segments, *data.shape[1:])).index_add(0, ids.long(), data)


def _state_tensors(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], created_after: list | None = None
) -> list[torch.Tensor]:
    """The parameters and the optimizer's state tensors of ``params`` (moments, step counts).

    With ``created_after`` (an earlier result): only the state tensors not in it, i.e. those the
    optimizer created lazily in its first step.
    """
    device = params[0].device if params else None
    # a host-side step counter of a GPU optimizer (torch.optim's default) is left alone: restoring
    # it would need the device's finiteness flag on the host, a sync
    state = [
        local(t)
        for p in params
        for t in opt.state.get(p, {}).values()
        if torch.is_tensor(t) and t.device == device
    ]
    if created_after is None:
        return [*map(local, params), *state]
    known = {id(t) for t in created_after}
    return [t for t in state if id(t) not in known]


class TwinTrainer(AdaptSteps):
    """PyTorch engine of ``tandem_core.MixtureRun``: twins, optimizers, per-domain statistics.

    ADAPT's weighted step and anchor refresh come from ``AdaptSteps`` (``adapt_step.py``).

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
        if config.method == "doge" and (config.sampling != "reweight" or config.accumulate > 1):
            raise ConfigError(
                "method='doge' needs sampling='reweight' (per-domain sub-batches) and accumulate=1"
            )
        self.cfg, self.m = config, num_domains
        self.v = num_val_domains or num_domains
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = getattr(torch, config.dtype)
        self.proxy = model.to(self.device, self.dtype)
        self.vocab_size = _vocab_size(model)
        self.reference = copy.deepcopy(self.proxy)
        self.xp = xp_torch
        zero = partial(torch.zeros, (), dtype=torch.int64, device=self.device)
        self._step_count, self._nonfinite = zero(), zero()
        self._first_nonfinite = zero() - 1
        self.world, self.rank = world_and_rank()
        self._calls = {"proxy": self.proxy, "reference": self.reference}
        self.sharded = config.fsdp and self.world > 1
        if self.world > 1:
            if config.fuse_twins:
                raise ConfigError("fuse_twins is not available under torch.distributed (DDP)")
            if self.sharded and config.compile:
                raise ConfigError("train.compile is not supported with train.fsdp")
            self._calls = {
                k: wrap(m, self.device, fsdp=self.sharded) for k, m in self._calls.items()
            }
        # after wrapping: FSDP replaces the parameters by their shards
        make = optimizer or partial(make_optimizer, cfg=config)
        self.opt_u = make(self.proxy.parameters(), lr=config.lr)
        self.opt_w = make(self.reference.parameters(), lr=config.lr_reference or config.lr)
        self._losses = self._sample_losses
        self._twin_losses = self._fused_twin_losses if config.fuse_twins else self._pair_losses
        self._hidden_step = self._hidden_losses  # ADAPT: losses and hidden states, one forward
        if config.compile:
            self._losses = torch.compile(self._losses, dynamic=False)
            self._twin_losses = torch.compile(self._twin_losses, dynamic=False)
            self._hidden_step = torch.compile(self._hidden_step, dynamic=False)

    # ------------------------------------------------------------------ losses
    def _device_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return {
            k: torch.as_tensor(np.asarray(v)).to(self.device, non_blocking=True)
            for k, v in batch.items()
        }

    def _parts(self, batch: dict, m: int) -> tuple[list[dict], torch.Tensor]:
        """This rank's micro-batches of a global host batch, and the WHOLE batch's counts (M,)."""
        counts = torch.as_tensor(tc.scored_counts(batch, m), dtype=self.dtype).to(self.device)
        parts = tc.split_rows(batch, self.cfg.accumulate, rank=self.rank, world=self.world)
        return [self._device_batch(p) for p in parts], counts

    def _sample_losses(self, which: str, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        module = self._calls[which]
        logits, _ = logits_and_hidden(module, None, tokens)
        return per_sample_loss(logits, labels)

    def _pair_losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        lu, n = self._losses("proxy", tokens, labels)
        lw, _ = self._losses("reference", tokens, labels)
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

    def _val_objective(self, val: dict, counts: torch.Tensor) -> torch.Tensor:
        lv, nv = self._losses("reference", val["tokens"], val["labels"])
        sums = self._stats(lv, nv, val["domain"], self.v).sums
        present = (counts > 0).to(sums.dtype)
        return tc.weighted_objective(sums, counts, present / present.sum().clamp_min(1))

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate gradients of one part; DDP all-reduces only after the last micro-batch."""
        with contextlib.ExitStack() as stack:
            for module in self._calls.values():
                if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
                    module.set_requires_gradient_sync(last)
                elif not last and hasattr(module, "no_sync"):  # DDP
                    stack.enter_context(module.no_sync())
            (loss * self.world).backward()  # DDP averages over ranks; the parts are a sum

    def _step(self, pairs: list[tuple[torch.optim.Optimizer, nn.Module]]) -> None:
        """Optimizer steps; a step with a non-finite gradient is skipped on device and counted.

        Skipped means the parameters and the optimizer state (moments, step count) keep their
        values, as if the step never ran: a zeroed gradient alone would still let momentum and
        weight decay move the parameters. The check is on the gradient, identical on every rank
        after the all-reduce, so every rank skips the same steps. No host sync.
        """
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for opt, module in pairs:
            params = [p for p in module.parameters() if p.grad is not None]
            norm = full(nn.utils.get_total_norm([p.grad for p in params]))
            finite = torch.isfinite(norm)
            bad = bad | ~finite
            grads = [local(p.grad) for p in params]  # FSDP: this rank's shards
            for g in grads:
                g.nan_to_num_(0.0, 0.0, 0.0).mul_(finite)
            if self.cfg.grad_clip is not None:  # as nn.utils.clip_grads_with_norm_, on shards
                safe = torch.where(finite, norm, torch.zeros_like(norm))
                torch._foreach_mul_(grads, (self.cfg.grad_clip / (safe + 1e-6)).clamp(max=1.0))
            if self.cfg.nonfinite == "zero":  # no backup: saves memory, momentum still moves
                opt.step()
            else:
                self._skippable_step(opt, params, finite)
            opt.zero_grad(set_to_none=False)
        self._count(bad)

    @staticmethod
    def _skippable_step(opt: torch.optim.Optimizer, params: list, finite: torch.Tensor) -> None:
        """``opt.step()``, undone on device when ``finite`` is false (a backup of the state)."""
        kept = _state_tensors(opt, params)
        saved = [t.detach().clone() for t in kept]
        opt.step()
        with torch.no_grad():
            for t, old in zip(kept, saved):
                t.copy_(torch.where(finite, t, old))
            for t in _state_tensors(opt, params, created_after=kept):
                t.mul_(finite)  # state made by this first step: back to its zero start

    def _count(self, bad: torch.Tensor) -> None:
        first = torch.where(
            bad & (self._first_nonfinite < 0), self._step_count, self._first_nonfinite
        )
        self._first_nonfinite = first
        self._nonfinite = self._nonfinite + bad.to(torch.int64)
        self._step_count = self._step_count + 1

    # ------------------------------------------------------------------ engine API
    def init_mixture(self, transform: tc.MixtureTransform, num_domains: int) -> tc.MixtureState:
        """``transform.init`` on this device, in float32 (float64 with ``dtype="float64"``)."""
        return transform.init(num_domains, xp=self.xp, dtype=self.dtype, device=self.device)

    def _reshard(self) -> None:
        """FSDP: back to the sharded parameters (a root module stays gathered after a forward)."""
        if self.sharded:
            for module in (self.proxy, self.reference):
                module.reshard()

    def sync(self) -> None:
        """``w <- u``: parameters copied in place and a deep copy of the optimizer state."""
        self._reshard()
        with torch.no_grad():
            for pw, pu in zip(self.reference.parameters(), self.proxy.parameters()):
                pw.copy_(pu)
        copy_optimizer_state(self.opt_u, self.opt_w)

    def probe(self, train: dict, val: dict, alpha: torch.Tensor | None) -> tc.DomainStats:
        """Probing step: u on ``L_train``, w on ``L_val + gamma * L_train``, SAME train batch."""
        parts, counts = self._parts(train, self.m)
        vparts, vcounts = self._parts(val, self.v)
        stats = None
        for i, (tb, vb) in enumerate(zip(parts, vparts)):
            lu, lw, n = self._twin_losses(tb["tokens"], tb["labels"])
            su, sw = (
                self._stats(lu, n, tb["domain"], self.m),
                self._stats(lw, n, tb["domain"], self.m),
            )
            loss_w = self._val_objective(vb, vcounts) + self.cfg.gamma * tc.weighted_objective(
                sw.sums, counts, alpha
            )
            self._backward(
                tc.weighted_objective(su.sums, counts, alpha) + loss_w, i == len(parts) - 1
            )
            stats = _merge(stats, su)
        self._step([(self.opt_u, self.proxy), (self.opt_w, self.reference)])
        return stats

    def free(
        self, train: dict, alpha: torch.Tensor | None, *, model: str = "proxy"
    ) -> tc.DomainStats:
        """One step of u (or of the reference w: DoReMi's reference phase) on the train batch."""
        module, opt = (self.proxy, self.opt_u) if model == "proxy" else (self.reference, self.opt_w)
        parts, counts = self._parts(train, self.m)
        stats = None
        for i, tb in enumerate(parts):
            st = self._stats(*self._losses(model, tb["tokens"], tb["labels"]), tb["domain"], self.m)
            self._backward(tc.weighted_objective(st.sums, counts, alpha), i == len(parts) - 1)
            stats = _merge(stats, st)
        self._step([(opt, module)])
        return stats

    @torch.no_grad()
    def twin_update(self, batch: dict, state: tc.MixtureState, update: Callable) -> tuple:
        """Per-domain losses of both twins (eval mode), summed over ranks, Delta, mixture update."""
        parts, _ = self._parts(batch, self.m)
        twin = None
        with _eval(self.proxy, self.reference):
            for b in parts:
                lu, lw, n = self._twin_losses(b["tokens"], b["labels"])
                ids = b["domain"]
                twin = _merge(
                    twin,
                    tc.TwinStats(self._stats(lu, n, ids, self.m), self._stats(lw, n, ids, self.m)),
                )
        twin = tc.all_reduce_stats(twin, all_reduce_sum)  # ONE collective, before any division
        delta, _ = tc.twin_delta(twin)
        return update(state, twin), {"delta": delta, "twin_distance": self.twin_distance()}

    @torch.no_grad()
    def mixture_update(
        self, state: tc.MixtureState, stats: Any, update: Callable
    ) -> tc.MixtureState:
        """``update(state, stats)`` (eager; the core update is cheap and compile-safe)."""
        return update(state, stats)

    @torch.no_grad()
    def twin_distance(self) -> torch.Tensor:
        """``||u - w||`` over all parameters (device scalar)."""
        self._reshard()
        pu = [local(p) for p in self.proxy.parameters()]  # FSDP: this rank's shards
        diffs = torch._foreach_sub(pu, [local(p) for p in self.reference.parameters()])
        norms = torch.stack(torch._foreach_norm(diffs))
        if self.sharded:  # squares of the shards, summed over ranks
            return all_reduce_sum(norms.pow(2).sum()).sqrt()
        return torch.linalg.vector_norm(norms)

    def _token_losses(self, which: str, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        module = self._calls[which]
        return token_losses(logits_and_hidden(module, None, tokens)[0], labels)

    def doremi_step(self, train: dict, state: tc.MixtureState, update: Callable | None) -> tuple:
        """DoReMi Alg. 1: clipped excess loss vs the frozen reference w, mixture update, u step.

        The whole step's excess statistics (all micro-batches, all ranks) update the mixture
        BEFORE the proxy's gradient uses it: never a stale mixture.
        """
        parts, counts = self._parts(train, self.m)
        if update is not None:
            excess = None
            with torch.no_grad(), _eval(self.reference):
                for b in parts:
                    keep = b["labels"] != tc.IGNORE_INDEX
                    ref = self._token_losses("reference", b["tokens"], b["labels"])
                    tok = self._token_losses("proxy", b["tokens"], b["labels"])
                    excess = _merge(
                        excess,
                        tc.excess_loss_stats(
                            tok,
                            ref,
                            keep,
                            b["domain"],
                            self.m,
                            checked=False,
                            segment_sum=_segment_sum,
                        ),
                    )
            state = update(state, tc.all_reduce_stats(excess, all_reduce_sum))
        alpha = state.alpha if self.cfg.sampling == "reweight" else None
        stats = None
        for i, b in enumerate(parts):
            st = self._stats(*self._losses("proxy", b["tokens"], b["labels"]), b["domain"], self.m)
            self._backward(tc.weighted_objective(st.sums, counts, alpha), i == len(parts) - 1)
            stats = _merge(stats, st)
        self._step([(self.opt_u, self.proxy)])
        return state, stats

    def doge_step(
        self, train: dict, val: dict, state: tc.MixtureState, update: Callable | None
    ) -> tuple:
        """DoGE: alignment ``W_m = <g_m, g_val>``, mixture update, u step on ``sum alpha_m g_m``."""
        if self.world > 1:
            raise ConfigError("method='doge' runs on one process (per-domain gradients: no DDP)")
        tb, vb = self._device_batch(train), self._device_batch(val)
        grads, val_grad, losses, n = doge_gradients(self.proxy, tb, vb, self.m, self.v)
        scores = sum(g.flatten(1) @ val_grad[k].flatten() for k, g in grads.items())
        if update is not None:
            state = update(state, scores)
        alpha = state.alpha.to(self.dtype)
        for name, p in self.proxy.named_parameters():
            p.grad = torch.einsum("m,m...->...", alpha, grads[name])
        self._step([(self.opt_u, self.proxy)])
        return state, self._stats(losses, n, tb["domain"], self.m)

    @torch.no_grad()
    def evaluate(self, batches: list[dict]) -> np.ndarray:
        """Proxy loss per batch (mean over samples with scored tokens): host float64 ``(len,)``."""
        out = []
        with _eval(self.proxy):
            for batch in batches:
                b = self._device_batch(batch)
                logits, _ = logits_and_hidden(self.proxy, None, b["tokens"])
                loss, n = per_sample_loss(logits, b["labels"])
                keep = (n > 0).to(loss.dtype)
                out.append((loss * keep).sum() / keep.sum().clamp_min(1))
        return torch.stack(out).double().cpu().numpy() if out else np.zeros(0)

    def counters(self) -> dict[str, torch.Tensor]:
        """Device counters: steps with a non-finite loss, and the first such step (-1: none)."""
        return {"nonfinite": self._nonfinite, "first_nonfinite": self._first_nonfinite}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Both models, both optimizer states, the counters and torch's RNG state."""
        self._reshard()
        return {
            "proxy": {k: full(v.detach()) for k, v in self.proxy.state_dict().items()},
            "reference": {k: full(v.detach()) for k, v in self.reference.state_dict().items()},
            "opt_u": optimizer_to_tree(self.opt_u),
            "opt_w": optimizer_to_tree(self.opt_w),
            "counters": {
                "step": self._step_count,
                "nonfinite": self._nonfinite,
                "first": self._first_nonfinite,
            },
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may be numpy)."""
        self._reshard()
        for module, key in ((self.proxy, "proxy"), (self.reference, "reference")):
            current = module.state_dict()
            module.load_state_dict(
                {
                    k: shard_like(torch.as_tensor(np.asarray(v)), current[k])
                    for k, v in state[key].items()
                }
            )
        optimizer_from_tree(self.opt_u, state["opt_u"], self.device)
        optimizer_from_tree(self.opt_w, state["opt_w"], self.device)
        c = {k: self.to_device_tree(v) for k, v in state["counters"].items()}
        self._step_count, self._nonfinite, self._first_nonfinite = (
            c["step"],
            c["nonfinite"],
            c["first"],
        )
        torch.set_rng_state(torch.as_tensor(np.asarray(state["torch_rng"])).to(torch.uint8))

    def to_device_tree(self, tree: Any) -> Any:
        """Move a nest of (numpy or torch) arrays onto this device, dtypes kept."""
        return tree_map(
            lambda a: torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).to(
                self.device
            ),
            tree,
        )

    @torch.no_grad()
    def predict_logits(self, batch: dict) -> torch.Tensor:
        """The proxy's logits ``(B, T, V)`` on ``batch["tokens"]`` (eval mode, no grad), on device.

        For probes of the predictive distribution, e.g. TaskPGM's pairwise divergences.
        """
        tokens = self._device_batch({"tokens": batch["tokens"]})["tokens"]
        with _eval(self.proxy):
            logits, _ = logits_and_hidden(self.proxy, None, tokens)
        return logits


def _vocab_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    return getattr(cfg, "vocab_size", None)


def _merge(acc: Any, stats: Any) -> Any:
    stats = tc.tree_map(lambda a: a.detach(), stats)
    return stats if acc is None else tc.merge_stats(acc, stats)


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
