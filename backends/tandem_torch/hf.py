"""Hugging Face causal LMs, from a local config or a local pretrained folder.

Nothing is downloaded: configs and weights are read with ``local_files_only=True``. The model is
checked against the data before training (vocabulary, context) with errors naming the keys.

Dropout is switched off (every ``*dropout*`` / ``*pdrop*`` config value and every ``nn.Dropout``
set to 0): the twins u and w would otherwise draw different masks on the same batch, and that noise
swamps the small twin difference TANDEM measures; ``torch.func.vmap`` (fused twins, the alignment
signal's per-domain gradients) also refuses random operations. Attention runs as configured (SDPA
by default); ``prepare_for_training`` switches it to the vmap-friendly eager kernel when the run
vmaps over the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem_core import ConfigError
from tandem_core.run import ModelSpec

__all__ = ["build_hf_model", "is_hf_model", "prepare_for_training", "zero_dropout"]

CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def build_hf_model(spec: ModelSpec, *, vocab_size: int, seq_len: int) -> Any:
    """An ``AutoModelForCausalLM`` from ``model.hf_config`` (random init) or ``model.hf_path``.

    Args:
        spec: the [model] table (``hf_config`` or ``hf_path``, ``seed``).
        vocab_size: the data's vocabulary size; the model's ``vocab_size`` must be at least this.
        seq_len: the training context; the model's context must be at least this.

    Returns:
        A ``transformers.PreTrainedModel`` in train mode, dropout off.

    Raises:
        ConfigError: both or missing paths, unreadable config or weights, vocabulary or context
            too small.
    """
    if spec.hf_config and spec.hf_path:
        raise ConfigError("model.hf_config and model.hf_path are exclusive: give one")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    key, source = ("hf_config", spec.hf_config) if spec.hf_config else ("hf_path", spec.hf_path)
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"model.{key}={source!r}: no such file or folder")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"model.{key}={source!r}: the folder has no config.json")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model.{key}={source!r}: cannot read the config ({err})") from err
    check_config(config, key=key, vocab_size=vocab_size, seq_len=seq_len)
    zero_dropout(config)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            if key == "hf_config":
                model = AutoModelForCausalLM.from_config(config)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    str(path), config=config, local_files_only=True
                )
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model.{key}={source!r}: cannot build the model ({err})") from err
    zero_dropout(model)
    return model.train()


def check_config(config: Any, *, key: str, vocab_size: int, seq_len: int) -> None:
    """Raise ``ConfigError`` if the config's vocabulary or context is smaller than the data's."""
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and vocab < vocab_size:
        raise ConfigError(
            f"model.{key}: vocab_size={vocab} is smaller than the data's vocabulary "
            f"({vocab_size} tokens); raise vocab_size in the config or use a matching tokenizer"
        )
    for name in CONTEXT_KEYS:
        context = getattr(config, name, None)
        if isinstance(context, int) and context < seq_len:
            raise ConfigError(
                f"model.{key}: {name}={context} is smaller than data.seq_len={seq_len}; "
                f"lower data.seq_len or raise {name}"
            )


def zero_dropout(obj: Any) -> Any:
    """Set dropout to 0: float ``*dropout*`` / ``*pdrop*`` config fields, or ``nn.Dropout`` modules.

    Args:
        obj: a ``transformers`` config or a torch module (changed in place).

    Returns:
        ``obj``.
    """
    if hasattr(obj, "modules"):
        from torch import nn

        for module in obj.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
        return obj
    for name, value in obj.to_dict().items():
        if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
            setattr(obj, name, 0.0)
    return obj


def is_hf_model(model: Any) -> bool:
    """Whether ``model`` is a ``transformers.PreTrainedModel`` (without importing transformers)."""
    return any(c.__name__ == "PreTrainedModel" for c in type(model).__mro__)


def prepare_for_training(model: Any, *, vmapped: bool) -> Any:
    """Eager attention when the run vmaps over the model (fused twins, the alignment signal).

    ``torch.func.vmap`` has no batching rule for the fused SDPA kernels (a slow per-sample fallback
    with a warning); the eager kernel is plain tensor algebra.

    Args:
        model: a ``transformers.PreTrainedModel`` (changed in place).
        vmapped: whether the run vmaps over the model (otherwise ``model`` is returned as is).

    Raises:
        ConfigError: the model cannot switch its attention implementation.
    """
    if not vmapped:
        return model
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        else:  # transformers < 4.48: the attention modules read the config at call time
            model.config._attn_implementation = "eager"
        if getattr(model.config, "_attn_implementation", None) != "eager":
            raise ConfigError(
                "backend.fuse_twins=true and the alignment signal run the model under "
                f"torch.func.vmap, which needs eager attention, and {type(model).__name__} "
                "cannot switch to it; set backend.fuse_twins=false or use another method"
            )
    return model
