"""User equinox models: the type and output checks, the logits-only wrapper, and ``ModelView``.

A factory's model (``model.kind="module"``) is checked with one abstract forward before any
training; ``ModelView`` gives every JAX model the same per-sample loss and hidden-state view.
Batches are dicts of host (numpy) or JAX arrays with ``tokens`` ``(B, T)`` and, for losses,
``labels`` ``(B, T)`` (``IGNORE_INDEX`` = -100 where not scored).
"""

from __future__ import annotations

import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from tandem_core import ConfigError
from tandem_core.run.model import check_logits_shape

from ._ops import on_device
from .models import per_sample_loss

__all__ = ["LogitsOnly", "ModelView", "check_equinox"]


class LogitsOnly(eqx.Module):
    """A model returning logits only, seen as ``(logits, None)`` (the engine's form).

    Args:
        model: an equinox module ``tokens (B, T) -> logits (B, T, V)``.
    """

    model: eqx.Module

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, None]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), None)``."""
        return self.model(tokens), None

    @property
    def cfg(self) -> Any:
        """The wrapped model's ``cfg`` (its ``vocab_size`` bounds the token ids), if any."""
        return getattr(self.model, "cfg", None)


def check_equinox(model: Any, target: str, vocab_size: int, seq_len: int) -> eqx.Module:
    """Check ``model`` is an equinox module with a valid output; wrap a logits-only one.

    The output is found with ``eqx.filter_eval_shape`` on int32 tokens ``(1, seq_len)``: shapes
    only, no computation.

    Returns:
        ``model`` if it returns ``(logits, hidden | None)``, else ``LogitsOnly(model)``.

    Raises:
        ConfigError: not an equinox module, a failing call, or an unexpected output.
    """
    if not isinstance(model, eqx.Module):
        torch = sys.modules.get("torch")
        hint = (
            " (a torch nn.Module: set run.backend='torch')"
            if torch and isinstance(model, torch.nn.Module)
            else ""
        )
        raise ConfigError(
            f"model.module={target!r} returned {type(model).__name__}, not an equinox.Module "
            f"(run.backend='jax'){hint}"
        )
    tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    try:
        out = eqx.filter_eval_shape(model, tokens)
    except Exception as err:  # noqa: BLE001 - any failure of user code becomes a config error
        raise ConfigError(
            f"model.module={target!r}: calling the model on tokens (1, {seq_len}) failed: {err}"
        ) from err
    if isinstance(out, jax.ShapeDtypeStruct):
        check_logits_shape(tuple(out.shape), target, vocab_size, seq_len)
        return LogitsOnly(model)
    if (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], jax.ShapeDtypeStruct)
        and (out[1] is None or isinstance(out[1], jax.ShapeDtypeStruct))
    ):
        check_logits_shape(tuple(out[0].shape), target, vocab_size, seq_len)
        return model
    raise ConfigError(
        f"model.module={target!r}: the model returned {type(out).__name__}; expected logits "
        "(B, T, V) or a tuple (logits, hidden or None)"
    )


class ModelView:
    """An equinox causal LM seen as ``per_sample_loss(batch)`` and ``hidden_states(batch)``.

    Args:
        model: an equinox module ``tokens (B, T) -> logits`` or ``(logits, hidden | None)``.
    """

    backend = "jax"

    def __init__(self, model: eqx.Module) -> None:
        self.model = model

    def logits_and_hidden(self, tokens: Any, params: Any = None) -> tuple:
        """``tokens (B, T)`` -> ``(logits (B, T, V), hidden (B, T, H) | None)``.

        Args:
            tokens: int array ``(B, T)``, host or JAX.
            params: optional parameters to call the model with (the ``eqx.is_inexact_array``
                partition of the model).
        """
        model = self.model
        if params is not None:
            model = eqx.combine(params, eqx.partition(model, eqx.is_inexact_array)[1])
        out = model(on_device(tokens))
        return (out[0], out[1]) if isinstance(out, tuple) else (out, None)

    def per_sample_loss(self, batch: dict, params: Any = None) -> jax.Array:
        """Token-mean cross-entropy per sample over scored labels: float ``(B,)``.

        A row with no scored label has loss 0. Differentiable in ``params``.
        """
        logits, _ = self.logits_and_hidden(batch["tokens"], params)
        return per_sample_loss(logits, on_device(batch["labels"]))[0]

    def hidden_states(self, batch: dict) -> jax.Array:
        """Last-layer hidden states ``(B, T, H)`` under ``stop_gradient``.

        Raises:
            ConfigError: the model does not return hidden states.
        """
        _, hidden = self.logits_and_hidden(batch["tokens"])
        if hidden is None or hidden.ndim != 3:
            raise ConfigError(
                f"{type(self.model).__name__} does not return hidden states (B, T, H): return "
                "(logits, hidden) from the model to use per-sample scores from embeddings"
            )
        return jax.lax.stop_gradient(hidden)
