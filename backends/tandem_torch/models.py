"""Torch models: the built-in tiny GPT (``tandem_core.run.gpt`` layout) and the model protocol.

``logits_and_hidden(module, params, tokens)`` reads any causal LM ``nn.Module``, called
functionally (``torch.func.functional_call``) so the twins can share one module and be fused with
``vmap``. ``TinyGPT`` stores ``(in, out)`` weights under ``tandem_core.run.gpt`` names, so its
``state_dict`` IS the numpy parameter dict, and the JAX model loads the same weights.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tandem_core.run.gpt import GPTConfig, gpt_param_shapes, init_gpt_params

__all__ = [
    "TinyGPT",
    "eval_mode",
    "logits_and_hidden",
    "numpy_params",
    "per_sample_loss",
    "token_losses",
]

IGNORE_INDEX = -100


class _Affine(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class _LayerNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d))
        self.bias = nn.Parameter(torch.empty(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class _Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.qkv = _Affine(cfg.d_model, 3 * cfg.d_model)
        self.proj = _Affine(cfg.d_model, cfg.d_model)
        self.n_head = cfg.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d = x.shape[-2:]
        q, k, v = (
            rearrange(a, "b t (h e) -> b h t e", h=self.n_head) for a in self.qkv(x).split(d, -1)
        )
        # explicit causal softmax (not SDPA): vmap has no batching rule for the fused CPU kernel
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_head)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        return self.proj(rearrange(att @ v, "b h t e -> b t (h e)"))


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = _LayerNorm(cfg.d_model, cfg.ln_eps)
        self.attn = _Attention(cfg)
        self.ln2 = _LayerNorm(cfg.d_model, cfg.ln_eps)
        self.mlp = nn.ModuleDict(
            {
                "fc": _Affine(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
                "proj": _Affine(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        h = F.gelu(self.mlp["fc"](self.ln2(x)), approximate="tanh")
        return x + self.mlp["proj"](h)


class TinyGPT(nn.Module):
    """The built-in decoder-only GPT (architecture and names of ``tandem_core.run.gpt``).

    Args:
        cfg: model configuration.
        params: optional numpy weights ``{name: array}``; default ``init_gpt_params(cfg, seed)``.
        seed: initialisation seed when ``params`` is not given.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        cfg: GPTConfig,
        params: dict[str, np.ndarray] | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Parameter(torch.empty(cfg.vocab_size, cfg.d_model))
        self.wpe = nn.Parameter(torch.empty(cfg.seq_len, cfg.d_model))
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = _LayerNorm(cfg.d_model, cfg.ln_eps)
        self.load_numpy(init_gpt_params(cfg, seed) if params is None else params)
        self.to(dtype)

    def load_numpy(self, params: dict[str, np.ndarray]) -> None:
        """Copy numpy weights in (names and shapes of ``tandem_core.run.gpt.gpt_param_shapes``)."""
        shapes = gpt_param_shapes(self.cfg)
        if set(params) != set(shapes):
            raise ValueError(f"parameter names differ from the layout: {set(params) ^ set(shapes)}")
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in params.items()}
        for name, value in state.items():
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != {shapes[name]}")
        self.load_state_dict(state)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False) -> Any:
        """``tokens (B, T)`` -> ``logits (B, T, V)`` (and the final-norm ``hidden (B, T, D)``)."""
        t = tokens.shape[-1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model context {self.cfg.seq_len}")
        x = self.wte[tokens] + self.wpe[:t]
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_f(x)
        logits = hidden @ self.wte.T
        return (logits, hidden) if return_hidden else logits


def numpy_params(module: nn.Module) -> dict[str, np.ndarray]:
    """A module's parameters as ``{name: numpy array}`` (host copies)."""
    return {k: v.detach().cpu().numpy() for k, v in module.named_parameters()}


def logits_and_hidden(module: nn.Module, params: dict | None, tokens: torch.Tensor) -> tuple:
    """Functional forward of any causal LM module: ``(logits (B, T, V), hidden (B, T, D) | None)``.

    Accepted outputs: a ``logits`` tensor (hidden ``None``); a tuple ``(logits, hidden)`` or
    ``(logits,)``; a Hugging Face ``ModelOutput`` / dict with ``logits`` (hidden: the last entry of
    ``hidden_states``, requested with ``output_hidden_states=True``). Keyword arguments are passed
    only if ``forward`` accepts them (see ``_forward_kwargs``), so plain modules work unchanged.

    Args:
        module: the model; its parameters are replaced by ``params`` for this call.
        params: ``{name: tensor}`` as ``dict(module.named_parameters())`` (stacked under vmap),
            or ``None``: the module's own parameters, through its own ``__call__`` (wrappers'
            hooks run: FSDP gathers its shards there).
        tokens: int tensor ``(B, T)``.

    Returns:
        ``(logits (B, T, V), hidden (B, T, D))``; ``hidden`` is ``None`` when the module does not
        expose hidden states.

    Raises:
        TypeError: the module returned something without logits.
    """
    kwargs = {"return_hidden": True} if isinstance(module, TinyGPT) else _forward_kwargs(module)
    if params is None:
        out = module(tokens, **kwargs)
    else:
        out = torch.func.functional_call(module, params, (tokens,), kwargs)
    if isinstance(module, TinyGPT):
        return out
    return _split_output(out)


def _forward_kwargs(module: nn.Module) -> dict[str, bool]:
    """Keywords for ``module.forward``: hidden states on, KV cache off, where they are accepted.

    ``return_hidden`` (the tandem convention) and ``output_hidden_states`` / ``use_cache`` (Hugging
    Face) are passed when named in the signature; ``output_hidden_states`` also through
    ``**kwargs`` of a Hugging Face model (a ``config`` with ``output_hidden_states``). Wrappers
    that forward keywords (DDP / FSDP ``.module``, ``torch.compile``'s ``._orig_mod``) are looked
    through.
    """
    while True:
        if type(module).__name__ in ("DistributedDataParallel", "FullyShardedDataParallel"):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            break
    sig = inspect.signature(module.forward).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
    hf = hasattr(getattr(module, "config", None), "output_hidden_states")
    kwargs = {}
    if "return_hidden" in sig:
        kwargs["return_hidden"] = True
    elif "output_hidden_states" in sig or (var_kw and hf):
        kwargs["output_hidden_states"] = True
    if "use_cache" in sig:
        kwargs["use_cache"] = False
    return kwargs


def _split_output(out: Any) -> tuple:
    """``(logits, hidden | None)`` from a tensor, a tuple, a dict or a ``ModelOutput``."""
    if isinstance(out, torch.Tensor):
        return out, None
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if logits is not None:
        states = getattr(out, "hidden_states", None)
        if states is None and isinstance(out, dict):
            states = out.get("hidden_states")
        if isinstance(states, (tuple, list)):
            states = states[-1] if states else None
        return logits, states
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        hidden = out[1] if len(out) > 1 and isinstance(out[1], torch.Tensor) else None
        return out[0], hidden
    raise TypeError(
        f"the model returned {type(out).__name__}; expected logits (B, T, V), a tuple "
        "(logits, hidden) or an output with a .logits field"
    )


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``(B, T)``; 0 where ``labels == IGNORE_INDEX``."""
    b, t, v = logits.shape
    flat = F.cross_entropy(
        logits.reshape(b * t, v).float()
        if logits.dtype == torch.bfloat16
        else logits.reshape(b * t, v),
        labels.reshape(b * t).long(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return flat.reshape(b, t)


def per_sample_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean cross-entropy per sample over scored labels: ``(loss (B,), scored (B,))``.

    A sample with no scored token has loss 0 and ``scored`` 0 (it is left out of the statistics).
    """
    keep = labels != IGNORE_INDEX
    n = keep.sum(-1)
    loss = token_losses(logits, labels).sum(-1) / n.clamp_min(1).to(logits.dtype)
    return loss, n


class eval_mode:  # noqa: N801 - a context manager used like a function
    """Put modules in eval mode (no dropout) for a block, restoring their previous mode."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)
