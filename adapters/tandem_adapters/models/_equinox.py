"""Equinox models from a factory: the type and output checks, and the logits-only wrapper."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from tandem_core.config import ConfigError

__all__ = ["LogitsOnly", "check_equinox"]


class LogitsOnly(eqx.Module):
    """A model returning logits only, seen as ``(logits, None)`` (the JAX ``TwinTrainer`` form).

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


def check_equinox(
    model: Any, target: str, vocab_size: int, seq_len: int, check_logits: Callable
) -> eqx.Module:
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
        check_logits(tuple(out.shape), target, vocab_size, seq_len)
        return LogitsOnly(model)
    if (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[0], jax.ShapeDtypeStruct)
        and (out[1] is None or isinstance(out[1], jax.ShapeDtypeStruct))
    ):
        check_logits(tuple(out[0].shape), target, vocab_size, seq_len)
        return model
    raise ConfigError(
        f"model.module={target!r}: the model returned {type(out).__name__}; expected logits "
        "(B, T, V) or a tuple (logits, hidden or None)"
    )
