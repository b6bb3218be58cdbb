"""Equinox models: the built-in tiny GPT (``tandem_core.run.gpt`` layout) and the loss functions.

``TinyGPT`` mirrors the torch module field for field: ``(in, out)`` weights stored under the same
dotted names, so ``from_numpy`` / ``to_numpy`` move one set of weights between the backends. A
model the engine trains is any callable ``model(tokens) -> (logits, hidden)`` that is an equinox
pytree.
"""

from __future__ import annotations

import math

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tandem_core.run.gpt import GPTConfig, gpt_param_shapes, init_gpt_params

__all__ = ["TinyGPT", "per_sample_loss", "to_numpy", "token_losses"]

IGNORE_INDEX = -100


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """Explicit leading axes for broadcasting (code stays valid under strict rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


class Affine(eqx.Module):
    """``x @ weight + bias`` with ``weight (in, out)``."""

    weight: jax.Array
    bias: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight + _lead(self.bias, x.ndim)


class LayerNorm(eqx.Module):
    """LayerNorm over the last axis (biased variance, as torch)."""

    weight: jax.Array
    bias: jax.Array
    eps: float = eqx.field(static=True, default=1e-5)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        normed = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return normed * _lead(self.weight, x.ndim) + _lead(self.bias, x.ndim)


class Attention(eqx.Module):
    """Causal multi-head self-attention."""

    qkv: Affine
    proj: Affine
    n_head: int = eqx.field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        t, hd = x.shape[1], x.shape[2] // self.n_head
        q, k, v = (
            einops.rearrange(a, "b t (h d) -> b h t d", h=self.n_head)
            for a in jnp.split(self.qkv(x), 3, -1)
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        att = jax.nn.softmax(jnp.where(causal[None, None], scores, -jnp.inf), axis=-1)
        return self.proj(einops.rearrange(att @ v, "b h t d -> b t (h d)"))


class MLP(eqx.Module):
    """``proj(gelu_tanh(fc(x)))``."""

    fc: Affine
    proj: Affine

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(jax.nn.gelu(self.fc(x), approximate=True))


class Block(eqx.Module):
    """Pre-norm transformer block."""

    ln1: LayerNorm
    attn: Attention
    ln2: LayerNorm
    mlp: MLP

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(eqx.Module):
    """The built-in decoder-only GPT (architecture and names of ``tandem_core.run.gpt``).

    Build it with ``TinyGPT.create(cfg, params=None, seed=0, dtype="float32")``.
    """

    wte: jax.Array
    wpe: jax.Array
    blocks: tuple[Block, ...]
    ln_f: LayerNorm
    cfg: GPTConfig = eqx.field(static=True)

    @classmethod
    def create(
        cls, cfg: GPTConfig, params: dict | None = None, *, seed: int = 0, dtype: str = "float32"
    ) -> TinyGPT:
        """From numpy weights ``{name: array}`` (default ``init_gpt_params(cfg, seed)``)."""
        params = init_gpt_params(cfg, seed) if params is None else params
        shapes = gpt_param_shapes(cfg)
        if set(params) != set(shapes):
            raise ValueError(f"parameter names differ from the layout: {set(params) ^ set(shapes)}")
        p = {}
        for name, shape in shapes.items():
            if tuple(np.shape(params[name])) != shape:
                raise ValueError(f"{name}: shape {np.shape(params[name])} != {shape}")
            p[name] = jnp.asarray(np.asarray(params[name]), dtype=dtype)

        def aff(prefix: str) -> Affine:
            return Affine(p[prefix + ".weight"], p[prefix + ".bias"])

        def ln(prefix: str) -> LayerNorm:
            return LayerNorm(p[prefix + ".weight"], p[prefix + ".bias"], cfg.ln_eps)

        blocks = tuple(
            Block(
                ln(f"blocks.{i}.ln1"),
                Attention(aff(f"blocks.{i}.attn.qkv"), aff(f"blocks.{i}.attn.proj"), cfg.n_head),
                ln(f"blocks.{i}.ln2"),
                MLP(aff(f"blocks.{i}.mlp.fc"), aff(f"blocks.{i}.mlp.proj")),
            )
            for i in range(cfg.n_layer)
        )
        return cls(p["wte"], p["wpe"], blocks, ln("ln_f"), cfg)

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``tokens (B, T)`` -> ``(logits (B, T, V), hidden (B, T, D))``."""
        t = tokens.shape[-1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model context {self.cfg.seq_len}")
        x = self.wte[tokens] + _lead(self.wpe[:t], 3)
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_f(x)
        return hidden @ self.wte.T, hidden


def to_numpy(model: TinyGPT) -> dict[str, np.ndarray]:
    """A TinyGPT's weights as ``{name: numpy array}`` (the torch ``state_dict`` names)."""
    out = {}
    for name in gpt_param_shapes(model.cfg):
        obj = model
        for part in name.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        out[name] = np.asarray(obj)
    return out


def token_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-token cross-entropy ``(B, T)``; 0 where ``labels == IGNORE_INDEX``."""
    keep = labels != IGNORE_INDEX
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels, 0))
    return jnp.where(keep, nll, 0.0)


def per_sample_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token-mean cross-entropy per sample over scored labels: ``(loss (B,), scored (B,))``."""
    n = (labels != IGNORE_INDEX).sum(-1)
    return token_losses(logits, labels).sum(-1) / jnp.maximum(n, 1).astype(logits.dtype), n
