"""Optimizer steps of the twins: backward with gradient-sync control, clipping, non-finite skips.

A step with a non-finite gradient never reaches the parameters: it is skipped on device
(``nonfinite="skip"``: parameters and optimizer state unchanged, from a backup) or its gradient is
zeroed (``"zero"``: no backup, momentum and weight decay still apply), and counted. Nothing here
reads a value on the host, so a training loop runs without synchronisation.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import nn

from .distributed import full, local

__all__ = ["Stepper"]

NONFINITE = ("skip", "zero", "raise")


class Stepper:
    """Turns losses into optimizer steps for one or two (wrapped) models, and counts bad steps.

    Args:
        calls: the modules the forwards go through (DDP / FSDP wrappers), for gradient sync.
        world: ranks (the loss parts are a sum over ranks; DDP averages).
        device: where the counters live.
        grad_clip: global-norm clip per model (``None``: off).
        nonfinite: ``"skip"`` (exact skip, the default), ``"zero"`` (gradient zeroed, no backup)
            or ``"raise"`` (skipped exactly; the run loop stops at its next logging step).
    """

    def __init__(
        self,
        calls: list[nn.Module],
        *,
        world: int,
        device: torch.device,
        grad_clip: float | None = 1.0,
        nonfinite: str = "skip",
    ) -> None:
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite={nonfinite!r} is not one of {NONFINITE}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.calls, self.world, self.device = calls, world, device
        self.grad_clip, self.nonfinite = grad_clip, nonfinite
        zero = partial(torch.zeros, (), dtype=torch.int64, device=device)
        self.step_count, self.nonfinite_count, self.first_nonfinite = zero(), zero(), zero() - 1

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate gradients of one part; DDP / FSDP reduce only after the last micro-batch."""
        with contextlib.ExitStack() as stack:
            for module in self.calls:
                if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
                    module.set_requires_gradient_sync(last)
                elif not last and hasattr(module, "no_sync"):  # DDP
                    stack.enter_context(module.no_sync())
            (loss * self.world).backward()  # DDP averages over ranks; the parts are a sum

    def step(self, pairs: list[tuple[torch.optim.Optimizer, nn.Module]]) -> None:
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
            if self.grad_clip is not None:  # as nn.utils.clip_grads_with_norm_, on shards
                safe = torch.where(finite, norm, torch.zeros_like(norm))
                torch._foreach_mul_(grads, (self.grad_clip / (safe + 1e-6)).clamp(max=1.0))
            if self.nonfinite == "zero":  # no backup: saves memory, momentum still moves
                opt.step()
            else:
                _skippable_step(opt, params, finite)
            opt.zero_grad(set_to_none=False)
        self._count(bad)

    def _count(self, bad: torch.Tensor) -> None:
        self.first_nonfinite = torch.where(
            bad & (self.first_nonfinite < 0), self.step_count, self.first_nonfinite
        )
        self.nonfinite_count = self.nonfinite_count + bad.to(torch.int64)
        self.step_count = self.step_count + 1

    def counters(self) -> dict[str, torch.Tensor]:
        """Device counters: steps with a non-finite gradient, and the first such step (-1: none)."""
        return {"nonfinite": self.nonfinite_count, "first_nonfinite": self.first_nonfinite}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The counters, for checkpoints."""
        return {
            "step": self.step_count,
            "nonfinite": self.nonfinite_count,
            "first": self.first_nonfinite,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (values may be numpy)."""
        c = {k: torch.as_tensor(v).to(self.device) for k, v in state.items()}
        self.step_count, self.nonfinite_count, self.first_nonfinite = (
            c["step"],
            c["nonfinite"],
            c["first"],
        )


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
