"""The ``[model]`` table: which proxy a backend builds, and the framework-free part of building it.

``kind="tiny_gpt"`` is the built-in GPT (``gpt.py``, the same weights in every backend); ``"hf"`` a
Hugging Face causal LM from a local config or folder (backends that run torch modules);
``"module"`` a user factory ``"package.module:fn"``, called as
``fn(vocab_size=, seq_len=[, seed=])``.
A backend's ``build_model(spec, vocab_size=, seq_len=)`` turns the spec into its own model type and
checks it with one forward (``check_logits_shape``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..methods import check_fields
from .gpt import GPTConfig

__all__ = ["ModelSpec", "check_logits_shape", "factory_kwargs", "load_factory"]

KINDS = ("tiny_gpt", "hf", "module")


@dataclass(frozen=True)
class ModelSpec:
    """The proxy model: the built-in tiny GPT, a local Hugging Face config/model, or a factory."""

    kind: str = "tiny_gpt"  # tiny_gpt | hf | module
    d_model: int = 64  # (tiny_gpt) width
    n_layer: int = 2  # (tiny_gpt) layers
    n_head: int = 4  # (tiny_gpt) attention heads (divides d_model)
    mlp_ratio: int = 4  # (tiny_gpt) MLP width / d_model
    hf_config: str = ""  # (hf) local config.json or folder: random init from the config
    hf_path: str = ""  # (hf) local folder with weights (from_pretrained, local files only)
    module: str = ""  # (module) "package.module:factory", called as factory(vocab_size, seq_len)
    seed: int = 0  # the model's initialisation

    def __post_init__(self) -> None:
        check_fields(
            self,
            choices={"kind": KINDS},
            positive=("d_model", "n_layer", "n_head", "mlp_ratio"),
            prefix="model.",
        )
        if self.kind == "hf" and not (self.hf_config or self.hf_path):
            raise ConfigError("model.kind='hf' needs model.hf_config or model.hf_path")
        if self.kind == "hf" and self.hf_config and self.hf_path:
            raise ConfigError("model.hf_config and model.hf_path are exclusive: give one")
        if self.kind == "module" and ":" not in self.module:
            raise ConfigError("model.kind='module' needs model.module='package.module:factory'")

    def gpt(self, vocab_size: int, seq_len: int) -> GPTConfig:
        """The ``GPTConfig`` of ``kind="tiny_gpt"`` for the data's vocabulary and context."""
        return GPTConfig(
            vocab_size, seq_len, self.d_model, self.n_layer, self.n_head, self.mlp_ratio
        )


def load_factory(target: str) -> Callable[..., Any]:
    """``"package.module:attr.path"`` -> the callable it names (``ConfigError`` otherwise).

    The current directory is tried too, so a ``mymodels.py`` next to the config just works.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model.module={target!r}: expected 'package.module:factory'")
    try:
        obj: Any = _import(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model.module={target!r}: cannot import {module_name!r} ({err})"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model.module={target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.module={target!r}: {attr!r} is not callable")
    return obj


def factory_kwargs(factory: Callable, spec: ModelSpec, vocab_size: int, seq_len: int) -> dict:
    """The keyword arguments of ``factory``: ``vocab_size``, ``seq_len`` and ``seed`` if taken.

    Raises:
        ConfigError: the factory does not accept ``vocab_size`` and ``seq_len``.
    """
    kwargs: dict[str, Any] = {"vocab_size": vocab_size, "seq_len": seq_len}
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature (a builtin): just call it
        return kwargs
    if "seed" in sig.parameters:
        kwargs["seed"] = spec.seed
    try:
        sig.bind(**kwargs)
    except TypeError as err:
        raise ConfigError(
            f"model.module={spec.module!r} must accept factory(vocab_size=..., seq_len=...) ({err})"
        ) from err
    return kwargs


def check_logits_shape(shape: tuple, target: str, vocab_size: int, seq_len: int) -> None:
    """``ConfigError`` unless tokens ``(1, seq_len)`` gave logits ``(1, seq_len, V >= vocab)``."""
    if len(shape) != 3 or shape[:2] != (1, seq_len) or shape[2] < vocab_size:
        raise ConfigError(
            f"model.module={target!r}: tokens (1, {seq_len}) gave logits of shape {shape}; "
            f"expected (1, {seq_len}, V) with V >= the data's vocabulary ({vocab_size})"
        )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        if err.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # a console script does not see the current directory
        try:
            return importlib.import_module(name)
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
