"""The built-in tiny GPT: ONE architecture and parameter layout for the torch and JAX backends.

This module is the specification: parameter names and shapes, the initialisation (numpy, seeded),
and a float64 numpy forward pass that the backends are tested against. Weights are stored as
``(in, out)`` matrices (``x @ W + b``) under the same names in every backend, so one set of numpy
weights loads into both.

Architecture (GPT-2 style, pre-norm): token + learned position embeddings; ``n_layer`` blocks of
``x + attn(ln1(x))`` and ``x + mlp(ln2(x))`` with causal multi-head attention and a tanh-GELU MLP;
a final LayerNorm; logits ``ln_f(x) @ wte.T`` (tied embeddings). No dropout (deterministic twins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data import IGNORE_INDEX

__all__ = ["GPTConfig", "gpt_forward_numpy", "gpt_param_shapes", "init_gpt_params", "token_losses"]


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of the tiny GPT."""

    vocab_size: int = 257
    seq_len: int = 64  # maximum context (positions)
    d_model: int = 64  # (tiny_gpt) width
    n_layer: int = 2  # (tiny_gpt) layers
    n_head: int = 4  # (tiny_gpt) attention heads (divides d_model)
    mlp_ratio: int = 4  # (tiny_gpt) MLP width / d_model
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layer", "n_head", "mlp_ratio"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")


def gpt_param_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes, in a fixed order (the layout every backend uses)."""
    d, h = cfg.d_model, cfg.d_model * cfg.mlp_ratio
    shapes = {"wte": (cfg.vocab_size, d), "wpe": (cfg.seq_len, d)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "ln1.weight": (d,),
                p + "ln1.bias": (d,),
                p + "attn.qkv.weight": (d, 3 * d),
                p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d),
                p + "attn.proj.bias": (d,),
                p + "ln2.weight": (d,),
                p + "ln2.bias": (d,),
                p + "mlp.fc.weight": (d, h),
                p + "mlp.fc.bias": (h,),
                p + "mlp.proj.weight": (h, d),
                p + "mlp.proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def init_gpt_params(cfg: GPTConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """GPT-2 initialisation: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2 n_layer).

    Args:
        cfg: the model configuration.
        seed: numpy seed; the same seed gives the same weights in every process.
        dtype: numpy dtype name of the arrays.

    Returns:
        ``{name: array}`` in the order of ``gpt_param_shapes``.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in gpt_param_shapes(cfg).items():
        if name.endswith(".bias"):
            value = np.zeros(shape)
        elif name.endswith(".weight") and name.split(".")[-2].startswith("ln"):
            value = np.ones(shape)
        else:
            std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("proj.weight") else 0.02
            value = rng.normal(0.0, std, size=shape)
        params[name] = value.astype(dtype)
    return params


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gpt_forward_numpy(
    params: dict[str, np.ndarray], tokens: np.ndarray, cfg: GPTConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference forward pass.

    Args:
        params: ``{name: array}`` as from ``init_gpt_params``.
        tokens: int ``(B, T)`` with ``T <= cfg.seq_len``.
        cfg: the model configuration.

    Returns:
        ``(logits (B, T, V), hidden (B, T, D))``, float64; ``hidden`` is the final-norm output.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    b, t = tokens.shape
    nh, hd = cfg.n_head, cfg.d_model // cfg.n_head
    x = p["wte"][tokens] + p["wpe"][:t]
    causal = np.tril(np.ones((t, t), dtype=bool))
    for i in range(cfg.n_layer):
        q = f"blocks.{i}."
        h = _layer_norm(x, p[q + "ln1.weight"], p[q + "ln1.bias"], cfg.ln_eps)
        qkv = h @ p[q + "attn.qkv.weight"] + p[q + "attn.qkv.bias"]
        qh, kh, vh = (a.reshape(b, t, nh, hd).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, -1))
        att = np.where(causal, qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ vh).transpose(0, 2, 1, 3).reshape(b, t, cfg.d_model)
        x = x + y @ p[q + "attn.proj.weight"] + p[q + "attn.proj.bias"]
        h = _layer_norm(x, p[q + "ln2.weight"], p[q + "ln2.bias"], cfg.ln_eps)
        h = _gelu_tanh(h @ p[q + "mlp.fc.weight"] + p[q + "mlp.fc.bias"])
        x = x + h @ p[q + "mlp.proj.weight"] + p[q + "mlp.proj.bias"]
    hidden = _layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], cfg.ln_eps)
    return hidden @ p["wte"].T, hidden


def token_losses(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 reference of the per-sample loss: token-mean cross-entropy over scored labels.

    Args:
        logits: float ``(B, T, V)``.
        labels: int ``(B, T)``; ``IGNORE_INDEX`` is not scored.

    Returns:
        ``(loss (B,), tokens (B,))``: a sample with no scored token has loss 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    keep = labels != IGNORE_INDEX
    picked = np.take_along_axis(logits, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    nll = np.where(keep, lse - picked, 0.0)
    n = keep.sum(-1)
    return nll.sum(-1) / np.maximum(n, 1), n
