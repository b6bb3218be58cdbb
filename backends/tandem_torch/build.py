"""Building the proxy a ``ModelSpec`` asks for, as a torch ``nn.Module``, checked before training.

``tiny_gpt``: the built-in GPT (``models.TinyGPT``, weights of ``tandem_core.run.gpt``); ``hf``: a
Hugging Face causal LM from a local config or folder (``hf.py``); ``module``: a user factory
``"package.module:fn"`` called as ``fn(vocab_size=, seq_len=[, seed=])`` under torch's RNG seeded
with ``model.seed``, then checked with one forward on ``(1, seq_len)`` tokens. A factory's dropout
is left as built: the twins then draw different masks, and vmapped runs refuse it
(``refuse_dropout_under_vmap``); build proxies with dropout 0 or call ``hf.zero_dropout(model)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import tandem_core as tc
from tandem_core import ConfigError
from tandem_core.backend import TrainingBackend
from tandem_core.run import ModelSpec, init_gpt_params
from tandem_core.run.model import check_logits_shape, factory_kwargs, load_factory

from .models import TinyGPT, logits_and_hidden

__all__ = ["build_model", "refuse_dropout_under_vmap"]


def build_model(spec: ModelSpec, *, vocab_size: int, seq_len: int) -> nn.Module:
    """The proxy of ``spec`` for the data's vocabulary and context.

    Raises:
        ConfigError: a model that cannot be built, or whose logits do not fit the data.
    """
    if spec.kind == "tiny_gpt":
        cfg = spec.gpt(vocab_size, seq_len)
        return TinyGPT(cfg, init_gpt_params(cfg, spec.seed))
    if spec.kind == "hf":
        from .hf import build_hf_model

        return build_hf_model(spec, vocab_size=vocab_size, seq_len=seq_len)
    factory = load_factory(spec.module)
    kwargs = factory_kwargs(factory, spec, vocab_size, seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = factory(**kwargs)
    return check_module(model, spec.module, vocab_size, seq_len)


def check_module(model: Any, target: str, vocab_size: int, seq_len: int) -> nn.Module:
    """``model`` if it is an ``nn.Module`` whose logits fit the data (``ConfigError`` if not)."""
    if not isinstance(model, nn.Module):
        owner = _owner(model)
        hint = f"; it is a model of backend {owner!r}: set run.backend={owner!r}" if owner else ""
        raise ConfigError(
            f"model.module={target!r} returned {type(model).__name__}, not a torch nn.Module "
            f"(run.backend='torch'){hint}"
        )
    tokens = torch.zeros((1, seq_len), dtype=torch.long)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits, _ = logits_and_hidden(model, dict(model.named_parameters()), tokens)
    except Exception as err:  # noqa: BLE001 - any failure of user code becomes a config error
        raise ConfigError(
            f"model.module={target!r}: forward on tokens (1, {seq_len}) failed: {err}"
        ) from err
    check_logits_shape(tuple(logits.shape), target, vocab_size, seq_len)
    return model


def _owner(model: Any) -> str | None:
    """The registered training backend that owns ``model`` (not an ``nn.Module``), or ``None``."""
    for name in tc.available_backends():
        try:
            backend = tc.load_backend(name)
            if isinstance(backend, TrainingBackend) and backend.owns(model):
                return name
        except Exception:  # noqa: BLE001, S112 - a broken backend only loses the hint
            continue
    return None


def refuse_dropout_under_vmap(model: nn.Module) -> None:
    """``ConfigError`` if ``model`` has active dropout: ``torch.func.vmap`` refuses random ops."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0 and module.training:
            raise ConfigError(
                "backend.fuse_twins=true and the alignment signal run the model under "
                "torch.func.vmap, which refuses random operations, and the model has dropout "
                f"({name}: p={module.p}); build it with dropout 0 "
                "(tandem_torch.hf.zero_dropout(model)) or set backend.fuse_twins=false"
            )
