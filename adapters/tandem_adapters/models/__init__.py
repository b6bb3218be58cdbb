"""Model sources, through the backend that runs them (``tc.load_backend(name)``).

``[model] kind``: ``"tiny_gpt"`` (the built-in GPT of every backend), ``"hf"`` (a Hugging Face
causal LM from a local config or folder, on backends running torch modules) or ``"module"`` (a
user factory ``"package.module:fn"``). Each backend builds and checks its own model type;
``adapter_for`` gives every model the same loss / hidden-state view.
"""

from __future__ import annotations

from typing import Any

from tandem_core import ConfigError, available_backends, load_backend
from tandem_core.backend import TrainingBackend, training_backend
from tandem_core.run import ModelSpec

__all__ = ["adapter_for", "build_model"]


def build_model(spec: ModelSpec, *, backend: str, vocab_size: int, seq_len: int) -> Any:
    """The proxy model of ``spec`` in ``backend``'s model type (e.g. a torch ``nn.Module``).

    Args:
        spec: the [model] table.
        backend: a registered training backend's name.
        vocab_size: the data's vocabulary size (the model's embedding size).
        seq_len: the training context.
    """
    return training_backend(backend).build_model(spec, vocab_size=vocab_size, seq_len=seq_len)


def adapter_for(model: Any, backend: str | None = None) -> Any:
    """``model`` seen as ``per_sample_loss(batch)`` / ``hidden_states(batch)`` by its backend.

    Args:
        model: a model of any installed training backend.
        backend: the backend's name (default: the one that owns ``model``).

    Raises:
        ConfigError: no installed backend owns ``model`` (or ``backend`` does not).
    """
    names = [backend] if backend is not None else available_backends()
    for name in names:
        try:
            found = load_backend(name)
        except (ImportError, ValueError, TypeError):
            continue
        if isinstance(found, TrainingBackend) and found.owns(model):
            return found.model_adapter(model)
    raise ConfigError(
        f"{type(model).__name__} is not a model of backend {backend or 'any installed backend'}: "
        "expected e.g. a torch nn.Module (torch) or an equinox.Module (jax)"
    )
