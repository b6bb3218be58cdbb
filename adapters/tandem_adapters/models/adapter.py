"""One view of every model, for users and for ADAPT: per-sample losses and last-layer hidden states.

``adapter_for(model)`` wraps the built-in tiny GPT of either backend, a Hugging Face causal LM or a
custom torch / equinox module. Batches are dicts of host (numpy) or backend arrays with ``tokens``
``(B, T)`` and, for losses, ``labels`` ``(B, T)`` (``IGNORE_INDEX`` = -100 where not scored).
Results are backend arrays: torch tensors on the model's device, or JAX arrays.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

from tandem_core.config import ConfigError

__all__ = ["ModelAdapter", "adapter_for"]


class ModelAdapter:
    """A causal LM seen as ``per_sample_loss(batch)`` and ``hidden_states(batch)``.

    Args:
        model: a torch ``nn.Module`` (backend ``"torch"``) or an equinox module (``"jax"``).
        backend: ``"torch"`` or ``"jax"``.
    """

    def __init__(self, model: Any, backend: str) -> None:
        self.model, self.backend = model, backend

    def logits_and_hidden(self, tokens: Any, params: Any = None) -> tuple:
        """``tokens (B, T)`` -> ``(logits (B, T, V), hidden (B, T, H) | None)``.

        Args:
            tokens: int array ``(B, T)``.
            params: optional parameters to call the model with (torch: ``{name: tensor}`` as
                ``dict(model.named_parameters())``; JAX: the ``eqx.is_inexact_array`` partition).
        """
        if self.backend == "torch":
            import torch

            from tandem_torch import logits_and_hidden

            p = dict(self.model.named_parameters()) if params is None else params
            device = next(iter(p.values())).device if p else None
            return logits_and_hidden(self.model, p, torch.as_tensor(_host(tokens), device=device))
        import equinox as eqx
        import jax.numpy as jnp

        model = self.model
        if params is not None:
            model = eqx.combine(params, eqx.partition(model, eqx.is_inexact_array)[1])
        out = model(jnp.asarray(tokens))
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def per_sample_loss(self, batch: dict, params: Any = None) -> Any:
        """Token-mean cross-entropy per sample over scored labels: float ``(B,)``.

        A row with no scored label has loss 0. Differentiable in ``params`` (or the model's own).
        """
        logits, _ = self.logits_and_hidden(batch["tokens"], params)
        if self.backend == "torch":
            import torch

            from tandem_torch import per_sample_loss

            labels = torch.as_tensor(_host(batch["labels"]), device=logits.device)
            return per_sample_loss(logits, labels)[0]
        import jax.numpy as jnp

        from tandem_jax import per_sample_loss

        return per_sample_loss(logits, jnp.asarray(batch["labels"]))[0]

    def hidden_states(self, batch: dict) -> Any:
        """Last-layer hidden states ``(B, T, H)``, detached (ADAPT's embeddings).

        Raises:
            ConfigError: the model does not return hidden states.
        """
        with self._no_grad():
            _, hidden = self.logits_and_hidden(batch["tokens"])
        if hidden is None or hidden.ndim != 3:
            raise ConfigError(
                f"{type(self.model).__name__} does not return hidden states (B, T, H): return "
                "(logits, hidden) from the model (or a Hugging Face output with hidden_states) "
                "to use ADAPT"
            )
        if self.backend == "torch":
            return hidden.detach()
        import jax

        return jax.lax.stop_gradient(hidden)

    def _no_grad(self) -> Any:
        if self.backend == "torch":
            import torch

            return torch.no_grad()
        return contextlib.nullcontext()


def adapter_for(model: Any, backend: str | None = None) -> ModelAdapter:
    """The ``ModelAdapter`` of ``model`` (backend inferred from its type when not given).

    Raises:
        ConfigError: the model is neither a torch ``nn.Module`` nor an equinox module, or does not
            belong to ``backend``.
    """
    found = _backend_of(model)
    if found is None or (backend is not None and backend != found):
        want = backend or "torch or jax"
        raise ConfigError(
            f"{type(model).__name__} is not a model of backend {want}: expected a torch nn.Module "
            "(torch) or an equinox.Module (jax)"
        )
    return ModelAdapter(model, found)


def _backend_of(model: Any) -> str | None:
    torch, eqx = sys.modules.get("torch"), sys.modules.get("equinox")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if eqx is not None and isinstance(model, eqx.Module):
        return "jax"
    return None


def _host(a: Any) -> Any:
    """Numpy for host arrays; torch tensors as they are."""
    return a if type(a).__module__.startswith("torch") else np.asarray(a)
