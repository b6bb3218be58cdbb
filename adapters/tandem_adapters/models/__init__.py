"""Model sources: build the proxy model a job asks for, in the backend it runs on."""

from __future__ import annotations

from typing import Any

from tandem_core.gpt import GPTConfig, init_gpt_params

from ..config import ModelConfig

__all__ = ["build_model", "make_trainer"]


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
) -> Any:
    """The backend's ``TwinTrainer`` for ``model``."""
    if backend == "torch":
        from tandem_torch import TwinTrainer

        return TwinTrainer(
            model, config, num_domains, num_val_domains=num_val_domains, device=device or None
        )
    from tandem_jax import TwinTrainer

    return TwinTrainer(model, config, num_domains, num_val_domains=num_val_domains)
