"""Custom model factories for ``model.kind = "module"`` tests (``"custom_models:<name>"``).

Tiny causal models: token embedding, a causal running mean over positions, a linear head. Torch
factories build ``nn.Module``s, ``eqx_*`` factories equinox modules; some return logits only.
"""

from __future__ import annotations

HIDDEN = 8


# ---------------------------------------------------------------- torch
def _torch_classes():
    import torch
    from torch import nn

    class CausalMean(nn.Module):
        """``tokens (B, T)`` -> logits ``(B, T, V)`` (and hidden ``(B, T, H)`` if asked)."""

        def __init__(self, vocab_size: int, hidden: int = HIDDEN, with_hidden: bool = False):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, hidden)
            self.head = nn.Linear(hidden, vocab_size)
            self.with_hidden = with_hidden

        def features(self, tokens):
            x = self.emb(tokens)
            steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)
            hidden = torch.tanh(x.cumsum(1) / steps[:, None])
            return self.head(hidden), hidden

        def forward(self, tokens):
            logits, hidden = self.features(tokens)
            return (logits, hidden) if self.with_hidden else logits

    class DictOut(CausalMean):
        def forward(self, tokens, output_hidden_states=False):
            logits, hidden = self.features(tokens)
            return {"logits": logits, "hidden_states": (hidden,) if output_hidden_states else None}

    return CausalMean, DictOut


def torch_logits(vocab_size: int, seq_len: int):
    """A torch module returning logits only."""
    return _torch_classes()[0](vocab_size)


def torch_hidden(vocab_size: int, seq_len: int, seed: int = 0):
    """A torch module returning ``(logits, hidden)`` (takes a ``seed``; torch is seeded anyway)."""
    return _torch_classes()[0](vocab_size, with_hidden=True)


def torch_dict(vocab_size: int, seq_len: int):
    """A torch module returning a dict with ``logits`` and ``hidden_states``."""
    return _torch_classes()[1](vocab_size)


def torch_dropout(vocab_size: int, seq_len: int):
    """Logits only, with dropout on the hidden states."""
    import torch

    base = _torch_classes()[0](vocab_size)
    return torch.nn.Sequential(base.emb, torch.nn.Dropout(0.2), base.head)


def torch_small_vocab(vocab_size: int, seq_len: int):
    """Logits with too few columns."""
    return _torch_classes()[0](vocab_size - 1)


def not_a_model(vocab_size: int, seq_len: int):
    """Something that is not a module."""
    return {"vocab_size": vocab_size}


def wrong_signature(vocab: int):
    """A factory that does not take (vocab_size, seq_len)."""
    raise AssertionError("never called")


NOT_CALLABLE = 3


# ---------------------------------------------------------------- equinox
def _eqx_class():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class EqxCausalMean(eqx.Module):
        emb: jax.Array
        head: jax.Array
        with_hidden: bool = eqx.field(static=True)

        def __call__(self, tokens):
            x = self.emb[tokens]
            steps = jnp.arange(1, x.shape[1] + 1, dtype=x.dtype)
            hidden = jnp.tanh(jnp.cumsum(x, axis=1) / steps[None, :, None])
            logits = hidden @ self.head
            return (logits, hidden) if self.with_hidden else logits

    return EqxCausalMean


def _eqx(vocab_size: int, seed: int, with_hidden: bool):
    import jax

    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    emb = 0.5 * jax.random.normal(k1, (vocab_size, HIDDEN))
    head = 0.5 * jax.random.normal(k2, (HIDDEN, vocab_size))
    return _eqx_class()(emb, head, with_hidden)


def eqx_logits(vocab_size: int, seq_len: int, seed: int = 0):
    """An equinox module returning logits only."""
    return _eqx(vocab_size, seed, with_hidden=False)


def eqx_hidden(vocab_size: int, seq_len: int, seed: int = 0):
    """An equinox module returning ``(logits, hidden)``."""
    return _eqx(vocab_size, seed, with_hidden=True)


def eqx_broken(vocab_size: int, seq_len: int):
    """An equinox module whose call fails (shape mismatch)."""
    import jax.numpy as jnp

    return _eqx_class()(jnp.zeros((vocab_size, 3)), jnp.zeros((4, vocab_size)), False)
