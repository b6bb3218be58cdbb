"""Model sources: build the proxy model a job asks for, in the backend it runs on.

``kind="tiny_gpt"``: the built-in GPT of either backend; ``"hf"``: a Hugging Face causal LM from a
local config or folder (torch; ``hf.py``); ``"module"``: a user factory ``"package.module:fn"``
(``factory.py``). ``adapter_for`` gives every one of them the same loss / hidden-state view.
"""

from __future__ import annotations

from typing import Any

from tandem_core.config import ConfigError
from tandem_core.gpt import GPTConfig, init_gpt_params

from ..config import ModelConfig
from .adapter import ModelAdapter as ModelAdapter
from .adapter import adapter_for as adapter_for

__all__ = ["ModelAdapter", "adapter_for", "build_model", "make_trainer"]


def build_model(spec: ModelConfig, *, backend: str, vocab_size: int, seq_len: int) -> Any:
    """The proxy model for ``backend`` (a torch ``nn.Module`` or an equinox module).

    Args:
        spec: the [model] table.
        backend: ``"torch"`` or ``"jax"``.
        vocab_size: the data's vocabulary size (the model's embedding size).
        seq_len: the training context.

    Returns:
        A model the backend's ``TwinTrainer`` accepts.
    """
    if spec.kind == "tiny_gpt":
        cfg = GPTConfig(
            vocab_size, seq_len, spec.d_model, spec.n_layer, spec.n_head, spec.mlp_ratio
        )
        params = init_gpt_params(cfg, spec.seed)
        if backend == "torch":
            from tandem_torch import TinyGPT

            return TinyGPT(cfg, params)
        from tandem_jax import TinyGPT

        return TinyGPT.create(cfg, params)
    if spec.kind == "hf":
        from .hf import build_hf_model

        return build_hf_model(spec, backend=backend, vocab_size=vocab_size, seq_len=seq_len)
    from .factory import build_from_factory

    return build_from_factory(spec, backend=backend, vocab_size=vocab_size, seq_len=seq_len)


def make_trainer(
    backend: str,
    model: Any,
    config: Any,
    *,
    num_domains: int,
    num_val_domains: int,
    device: str = "",
    devices: list | None = None,
) -> Any:
    """The backend's ``TwinTrainer`` for ``model`` (``devices``: JAX data-axis devices).

    A Hugging Face model gets eager attention first when the run vmaps over it (``fuse_twins``,
    DoGE): see ``hf.prepare_for_training``. A torch model with active dropout cannot run under
    vmap (random operations): ``ConfigError`` here rather than deep inside the first step.
    """
    if backend == "torch":
        from tandem_torch import TwinTrainer

        from .hf import is_hf_model, prepare_for_training

        if is_hf_model(model):
            model = prepare_for_training(model, config)
        _refuse_dropout_under_vmap(model, config)

        return TwinTrainer(
            model, config, num_domains, num_val_domains=num_val_domains, device=device or None
        )
    from tandem_jax import TwinTrainer

    return TwinTrainer(model, config, num_domains, num_val_domains=num_val_domains, devices=devices)


def _refuse_dropout_under_vmap(model: Any, config: Any) -> None:
    if not (config.fuse_twins or config.method == "doge"):
        return
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0 and module.training:
            what = "train.fuse_twins=true" if config.fuse_twins else "train.method='doge'"
            raise ConfigError(
                f"{what} runs the model under torch.func.vmap, which refuses random operations, "
                f"and the model has dropout ({name}: p={module.p}); build it with dropout 0 "
                "(tandem_adapters.models.hf.zero_dropout(model)) or set train.fuse_twins=false"
            )
