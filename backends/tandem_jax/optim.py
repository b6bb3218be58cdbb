"""optax optimizers for the twins, matching torch.optim's AdamW / SGD update rules."""

from __future__ import annotations

import optax

from tandem_core.run import TrainConfig

__all__ = ["make_optimizer"]


def make_optimizer(cfg: TrainConfig, lr: float) -> optax.GradientTransformation:
    """``optax.adamw`` (decoupled decay, as ``torch.optim.AdamW``) or SGD with coupled L2 decay.

    Gradient clipping by global norm comes first, as ``torch.nn.utils.clip_grad_norm_`` does.
    """
    if cfg.optimizer == "adamw":
        tx = optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        momentum = cfg.momentum or None
        tx = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay), optax.sgd(lr, momentum=momentum)
        )
    if cfg.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx
