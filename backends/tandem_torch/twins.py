"""Twins for your own loop: the proxy u, the reference w, their optimizers and one-step helpers.

A user loop (and ``TorchEngine``, which is built on this class) calls ``sync`` (``w <- u``,
parameters and optimizer state), ``probe`` (one step of both twins on the same train batch),
``step`` (one step of one model), ``stats`` (per-domain twin statistics for
``transform.update``) and ``distance``; the mixture update itself comes from ``tandem_core``
(docs/methods.md, "TANDEM"). Every method returns device tensors and reads nothing on the host.
"""

from __future__ import annotations

import copy
from typing import Any

import array_api_compat.torch as xp_torch
import torch
from torch import nn

import tandem_core as tc

from .batches import Split, domain_stats, merge, split_batch, to_device
from .distributed import all_reduce_sum, default_device, local, world_and_rank, wrap
from .losses import TwinLosses
from .models import eval_mode, logits_and_hidden
from .optim import copy_optimizer_state, make_optimizer, optimizer_for
from .steps import Stepper

__all__ = ["Twins"]

MODELS = ("proxy", "reference")


class Twins:
    """The proxy u and its reference twin w (a deep copy), trained side by side.

    Args:
        model: the proxy u: any causal LM ``nn.Module`` (``tokens (B, T) -> logits (B, T, V)``,
            see ``models.logits_and_hidden``); moved to ``device`` and ``dtype`` in place.
        optimizer: a ``torch.optim.Optimizer`` over ``model.parameters()``. The reference's
            optimizer is a copy of it (same class, ``defaults`` and groups) over w.
        num_domains: M, the training domains (ids ``0..M-1`` in ``batch["domain"]``).
        num_val_domains: validation domains (default M).
        reference_lr: the reference's learning rate eta_w (default: the proxy's).
        grad_clip: global-norm gradient clip of each model (``None``: off).
        nonfinite: a non-finite gradient skips the step exactly (``"skip"``), or is zeroed
            (``"zero"``: no backup of the state, for large models); ``counters()`` counts them.
        accumulate: micro-batches per optimizer step (gradient accumulation).
        fuse: compute both twins' losses in one ``torch.func.vmap`` (eager attention, no dropout).
        compile: ``torch.compile`` the loss functions.
        fsdp: under ``torch.distributed``, shard both twins with FSDP2 instead of DDP (the
            optimizers are rebuilt over the shards: use ``opt_proxy``, not ``optimizer``).
        device: torch device (default: CUDA if available, else CPU).
        dtype: parameter dtype (``torch.float64`` or ``"float64"``; default: the model's).

    Examples:
        One TANDEM episode of a user loop (``examples/torch_loop.py``)::

            twins = Twins(model, torch.optim.AdamW(model.parameters(), lr=3e-3), num_domains=4)
            twins.sync()
            twins.probe(sampler.train_batch(16), sampler.val_batch(32), state.alpha)
            state = transform.update(state, twins.stats(sampler.eval_batch(16)))
            twins.step(sampler.train_batch(16), state.alpha)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        num_domains: int,
        num_val_domains: int | None = None,
        reference_lr: float | None = None,
        grad_clip: float | None = 1.0,
        nonfinite: str = "skip",
        accumulate: int = 1,
        fuse: bool = False,
        compile: bool = False,
        fsdp: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        self.m, self.v, self.accumulate = num_domains, num_val_domains or num_domains, accumulate
        self.device = torch.device(device) if device else default_device()
        self.dtype = _dtype(dtype, model)
        self.proxy = model.to(self.device, self.dtype)  # parameters keep their identity
        if optimizer.state:  # state of earlier steps follows its parameters
            optimizer.load_state_dict(optimizer.state_dict())
        names = dict(self.proxy.named_parameters())
        self.reference = copy.deepcopy(self.proxy)
        self.world, self.rank = world_and_rank()
        self.sharded = fsdp and self.world > 1
        calls = {"proxy": self.proxy, "reference": self.reference}
        if self.world > 1:
            if fuse:
                raise tc.ConfigError("fused twins are not available under torch.distributed")
            if self.sharded and compile:
                raise tc.ConfigError("torch.compile is not supported with FSDP")
            calls = {k: wrap(m, self.device, fsdp=self.sharded) for k, m in calls.items()}
        # after wrapping: FSDP replaces the parameters by their shards
        sharded = dict(self.proxy.named_parameters())
        self.opt_proxy = optimizer_for(optimizer, names, sharded) if self.sharded else optimizer
        self.opt_reference = optimizer_for(
            self.opt_proxy, sharded, dict(self.reference.named_parameters()), lr=reference_lr
        )
        self.stepper = Stepper(
            list(calls.values()),
            world=self.world,
            device=self.device,
            grad_clip=grad_clip,
            nonfinite=nonfinite,
        )
        self._loss = TwinLosses(calls, fuse=fuse, compile=compile)

    @classmethod
    def from_config(
        cls,
        model: nn.Module,
        config: Any,
        *,
        num_domains: int,
        num_val_domains: int | None = None,
        optimizer: Any = None,
        **options: Any,
    ) -> Twins:
        """Twins from a ``tandem_core.run.TrainConfig`` (optimizer, clip, faults, dtype).

        Args:
            model: the proxy.
            config: the ``TrainConfig``.
            num_domains: M.
            num_val_domains: validation domains (default M).
            optimizer: ``f(params, *, lr) -> torch.optim.Optimizer`` (default: ``config``'s).
            **options: ``fuse``, ``compile``, ``fsdp``, ``device`` (the backend's options).
        """
        make = optimizer or (lambda params, lr: make_optimizer(params, cfg=config, lr=lr))
        return cls(
            model,
            make(model.parameters(), lr=config.lr),
            num_domains=num_domains,
            num_val_domains=num_val_domains,
            reference_lr=config.lr_reference,
            grad_clip=config.grad_clip,
            nonfinite=config.nonfinite,
            accumulate=config.accumulate,
            dtype=config.dtype,
            **options,
        )

    # ------------------------------------------------------------------ batches
    def init_mixture(self, transform: tc.MixtureTransform) -> tc.MixtureState:
        """``transform.init`` for the M domains, on this device in the twins' dtype."""
        return transform.init(self.m, xp=xp_torch, dtype=self.dtype, device=self.device)

    def batch(self, batch: dict) -> dict[str, torch.Tensor]:
        """A batch of host (numpy) arrays or tensors on this device, dtypes kept."""
        return to_device(batch, self.device)

    def split(self, batch: dict | Split, num_domains: int | None = None) -> Split:
        """This rank's micro-batches of a global batch, and the WHOLE batch's counts ``(M,)``."""
        if isinstance(batch, Split):
            return batch
        return split_batch(
            batch,
            num_domains or self.m,
            parts=self.accumulate,
            rank=self.rank,
            world=self.world,
            dtype=self.dtype,
            device=self.device,
        )

    # ------------------------------------------------------------------ losses
    def losses(self, tokens: torch.Tensor, labels: torch.Tensor, model: str = "proxy") -> tuple:
        """``(loss (B,), scored (B,))`` of ``model`` in its current mode (through its wrapper)."""
        return self._loss.sample(_checked(model), tokens, labels)

    def forward(self, tokens: torch.Tensor, model: str = "proxy") -> tuple:
        """``(logits (B, T, V), hidden (B, T, H) | None)`` of ``model`` through its wrapper."""
        return logits_and_hidden(self._loss.calls[_checked(model)], None, tokens)

    def losses_and_hidden(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple:
        """The proxy's training forward: ``(loss (B,), scored (B,), hidden (B, T, H) | None)``."""
        return self._loss.hidden(tokens, labels)

    # ------------------------------------------------------------------ steps
    def sync(self) -> None:
        """``w <- u``: parameters copied in place and a deep copy of the optimizer state."""
        self.reshard()
        with torch.no_grad():
            for pw, pu in zip(self.reference.parameters(), self.proxy.parameters()):
                pw.copy_(pu)
        copy_optimizer_state(self.opt_proxy, self.opt_reference)

    def probe(
        self,
        train: dict | Split,
        val: dict | Split,
        alpha: torch.Tensor | None,
        *,
        gamma: float = 1.0,
    ) -> tc.DomainStats:
        """One step of u on ``L_train`` and of w on ``L_val + gamma * L_train``, SAME train batch.

        Args:
            train: the train batch (host arrays or tensors, or a ``Split``).
            val: the validation batch (ids over the validation domains).
            alpha: the mixture ``(M,)``, or ``None`` for the plain batch mean (a batch sampled in
                proportion to the mixture).
            gamma: weight of the train loss in the reference's objective.

        Returns:
            u's per-domain train statistics ``DomainStats`` ``(M,)``.
        """
        (parts, counts), (vparts, vcounts) = self.split(train), self.split(val, self.v)
        stats = None
        for i, (tb, vb) in enumerate(zip(parts, vparts)):
            lu, lw, n = self._loss.twin(tb["tokens"], tb["labels"])
            su, sw = (
                domain_stats(lu, n, tb["domain"], self.m),
                domain_stats(lw, n, tb["domain"], self.m),
            )
            loss_w = self._loss.val_objective(vb, vcounts, self.v) + gamma * tc.weighted_objective(
                sw.sums, counts, alpha
            )
            self.stepper.backward(
                tc.weighted_objective(su.sums, counts, alpha) + loss_w, i == len(parts) - 1
            )
            stats = merge(stats, su)
        self.stepper.step([(self.opt_proxy, self.proxy), (self.opt_reference, self.reference)])
        return stats

    def step(
        self, train: dict | Split, alpha: torch.Tensor | None = None, *, model: str = "proxy"
    ) -> tc.DomainStats:
        """One optimizer step of ``model`` on ``sum_m alpha_m L^m`` (``None``: the batch mean).

        Returns:
            The per-domain train statistics ``DomainStats`` ``(M,)`` of the step's losses.
        """
        module, opt = self._pair(model)
        parts, counts = self.split(train)
        stats = None
        for i, tb in enumerate(parts):
            loss, n = self._loss.sample(model, tb["tokens"], tb["labels"])
            st = domain_stats(loss, n, tb["domain"], self.m)
            objective = tc.weighted_objective(st.sums, counts, alpha)
            self.stepper.backward(objective, i == len(parts) - 1)
            stats = merge(stats, st)
        self.stepper.step([(opt, module)])
        return stats

    def apply_gradients(self, grads: dict[str, torch.Tensor], *, model: str = "proxy") -> None:
        """One optimizer step of ``model`` from given gradients ``{name: tensor}`` (clip, skip)."""
        module, opt = self._pair(model)
        for name, p in module.named_parameters():
            p.grad = grads[name]
        self.stepper.step([(opt, module)])

    # ------------------------------------------------------------------ measurements
    @torch.no_grad()
    def stats(self, batch: dict | Split) -> tc.TwinStats:
        """Per-domain losses of both twins for ``transform.update``: ``TwinStats`` ``(M,)``.

        Eval mode, no grad, every micro-batch; summed over ranks in ONE collective.
        """
        twin = None
        with eval_mode(self.proxy, self.reference):
            for b in self.split(batch).parts:
                lu, lw, n = self._loss.twin(b["tokens"], b["labels"])
                ids = b["domain"]
                part = tc.TwinStats(
                    domain_stats(lu, n, ids, self.m), domain_stats(lw, n, ids, self.m)
                )
                twin = merge(twin, part)
        return tc.all_reduce_stats(twin, all_reduce_sum)  # before any division

    @torch.no_grad()
    def distance(self) -> torch.Tensor:
        """``||u - w||`` over all parameters (device scalar)."""
        self.reshard()
        pu = [local(p) for p in self.proxy.parameters()]  # FSDP: this rank's shards
        diffs = torch._foreach_sub(pu, [local(p) for p in self.reference.parameters()])
        norms = torch.stack(torch._foreach_norm(diffs))
        if self.sharded:  # squares of the shards, summed over ranks
            return all_reduce_sum(norms.pow(2).sum()).sqrt()
        return torch.linalg.vector_norm(norms)

    def counters(self) -> dict[str, torch.Tensor]:
        """Device counters: ``nonfinite`` steps and the ``first_nonfinite`` step (-1: none)."""
        return self.stepper.counters()

    # ------------------------------------------------------------------ access
    def _pair(self, which: str) -> tuple[nn.Module, torch.optim.Optimizer]:
        if _checked(which) == "proxy":
            return self.proxy, self.opt_proxy
        return self.reference, self.opt_reference

    def reshard(self) -> None:
        """FSDP: back to the sharded parameters (a root module stays gathered after a forward)."""
        if self.sharded:
            for module in (self.proxy, self.reference):
                module.reshard()


def _checked(which: str) -> str:
    if which not in MODELS:
        raise ValueError(f"model={which!r} is not one of {MODELS}")
    return which


def _dtype(dtype: str | torch.dtype | None, model: nn.Module) -> torch.dtype:
    if dtype is None:
        return next(model.parameters()).dtype
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype
