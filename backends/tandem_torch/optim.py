"""Optimizers from torch.optim for the twins, and their (de)serialisation for checkpoints."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from tandem_core.run import TrainConfig

from .distributed import full, shard_like

__all__ = [
    "copy_optimizer_state",
    "make_optimizer",
    "optimizer_for",
    "optimizer_from_tree",
    "optimizer_to_tree",
]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def make_optimizer(
    params: Iterable[torch.Tensor], *, cfg: TrainConfig, lr: float
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` or ``SGD``, SGD with coupled L2 weight decay."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def optimizer_for(
    opt: torch.optim.Optimizer,
    params: dict[str, nn.Parameter],
    target: dict[str, nn.Parameter],
    *,
    lr: float | None = None,
) -> torch.optim.Optimizer:
    """``opt`` over other parameters: same class, ``defaults``, groups and state, deep-copied.

    Args:
        opt: an optimizer over ``params`` (e.g. ``dict(model.named_parameters())``).
        params: ``{name: parameter}`` that ``opt`` holds.
        target: ``{name: parameter}`` of the new optimizer (same names: a deep copy of the model,
            or the model after FSDP replaced its parameters by shards).
        lr: a learning rate for every group of the new optimizer (``None``: keep ``opt``'s).

    Returns:
        The new optimizer; ``opt`` is unchanged.
    """
    if set(params) != set(target):
        raise ValueError(f"parameter names differ: {sorted(set(params) ^ set(target))}")
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    # deepcopy with a memo: every parameter of the copy IS the target's (groups and state keys)
    memo = {id(p): target[name] for name, p in params.items() if id(p) in held}
    if len(memo) != len(held):
        raise ValueError("the optimizer holds parameters that are not the model's")
    new = copy.deepcopy(opt, memo)
    if lr is not None:
        new.defaults["lr"] = lr
        for group in new.param_groups:
            group["lr"] = lr
    return new


def copy_optimizer_state(source: torch.optim.Optimizer, target: torch.optim.Optimizer) -> None:
    """Give ``target`` a deep copy of ``source``'s state (moments, step counts).

    ``Optimizer.load_state_dict`` alone would SHARE the moment tensors when dtype and device
    match, and the reference's steps would then move the proxy's moments too.
    """
    try:
        state = copy.deepcopy(source.state_dict())
    except Exception as err:  # noqa: BLE001 - any failure means the twins cannot be synchronised
        raise TypeError(
            f"the state of optimizer {type(source).__name__} cannot be copied for twin "
            f"synchronisation ({type(err).__name__}: {err}); use an optimizer whose state_dict "
            "holds only tensors and Python values"
        ) from err
    lrs = [g["lr"] for g in target.param_groups]
    target.load_state_dict(state)
    for group, lr in zip(target.param_groups, lrs):
        group["lr"] = lr  # the reference keeps its own learning rate (eta_w)


def optimizer_to_tree(opt: torch.optim.Optimizer) -> dict:
    """``state_dict`` with string keys and lists, storable by ``tandem_core.save_state``."""
    sd = opt.state_dict()
    return {
        "state": {str(k): {n: full(t) for n, t in v.items()} for k, v in sd["state"].items()},
        "param_groups": [_plain(g) for g in sd["param_groups"]],
    }


def optimizer_from_tree(opt: torch.optim.Optimizer, tree: dict, device: torch.device) -> None:
    """Inverse of ``optimizer_to_tree`` (arrays may be numpy)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {
        int(k): {
            n: shard_like(torch.as_tensor(v).to(device), params[int(k)])
            if n != "step"
            else torch.as_tensor(v)
            for n, v in s.items()
        }
        for k, s in tree["state"].items()
    }
    groups = []
    for group in tree["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(float(b) for b in group["betas"])
        group["params"] = [int(i) for i in group["params"]]
        groups.append(group)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
