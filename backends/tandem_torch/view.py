"""A torch model seen as per-sample losses and hidden states (what the jobs and users read).

Batches are dicts of host (numpy) arrays or tensors with ``tokens`` ``(B, T)`` and, for losses,
``labels`` ``(B, T)`` (``IGNORE_INDEX`` = -100 where not scored); results are tensors on the
model's device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tandem_core import ConfigError

from .batches import as_tensor
from .models import logits_and_hidden, per_sample_loss

__all__ = ["TorchModelView"]


class TorchModelView:
    """A causal LM ``nn.Module`` as ``per_sample_loss(batch)`` and ``hidden_states(batch)``.

    Args:
        model: the module (tiny GPT, Hugging Face causal LM, or any ``tokens -> logits`` module).
    """

    backend = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def logits_and_hidden(self, tokens: Any, params: dict | None = None) -> tuple:
        """``tokens (B, T)`` -> ``(logits (B, T, V), hidden (B, T, H) | None)``.

        Args:
            tokens: int array ``(B, T)``.
            params: optional ``{name: tensor}`` as ``dict(model.named_parameters())`` to call
                the model with.
        """
        p = dict(self.model.named_parameters()) if params is None else params
        device = next(iter(p.values())).device if p else None
        return logits_and_hidden(self.model, p, torch.as_tensor(as_tensor(tokens), device=device))

    def per_sample_loss(self, batch: dict, params: dict | None = None) -> torch.Tensor:
        """Token-mean cross-entropy per sample over scored labels: float ``(B,)``.

        A row with no scored label has loss 0. Differentiable in ``params`` (or the model's own).
        """
        logits, _ = self.logits_and_hidden(batch["tokens"], params)
        return per_sample_loss(
            logits, torch.as_tensor(as_tensor(batch["labels"]), device=logits.device)
        )[0]

    def hidden_states(self, batch: dict) -> torch.Tensor:
        """Last-layer hidden states ``(B, T, H)``, detached (per-sample scores' embeddings).

        Raises:
            ConfigError: the model does not return hidden states.
        """
        with torch.no_grad():
            _, hidden = self.logits_and_hidden(batch["tokens"])
        if hidden is None or hidden.ndim != 3:
            raise ConfigError(
                f"{type(self.model).__name__} does not return hidden states (B, T, H): return "
                "(logits, hidden) from the model (or a Hugging Face output with hidden_states) "
                "to score samples"
            )
        return hidden.detach()
