"""Custom models: ``model.module = "package.module:factory"``, a function that builds the model.

The factory is called as ``factory(vocab_size=..., seq_len=...)`` (plus ``seed=model.seed`` when
it takes a ``seed`` argument) and must return a torch ``nn.Module`` (torch backend) or an
``equinox.Module`` (JAX backend) mapping tokens ``(B, T)`` to logits ``(B, T, V)``, optionally with
hidden states: ``(logits, hidden)``. The result is checked with one forward on ``(1, seq_len)``
tokens (an abstract one for JAX) before any training. Dropout is left as built: the twins then draw
different masks, and vmapped runs (``fuse_twins``, DoGE) refuse it (see ``make_trainer``); build
proxies with dropout 0 or call ``hf.zero_dropout(model)``. The module is imported like any Python
module; the current directory is tried too, so a ``mymodels.py`` next to the config just works.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from typing import Any

from tandem_core.config import ConfigError

from ..config import ModelConfig

__all__ = ["build_from_factory", "load_factory"]


def build_from_factory(spec: ModelConfig, *, backend: str, vocab_size: int, seq_len: int) -> Any:
    """Import ``spec.module``, call it, check the model it returns for ``backend``.

    Args:
        spec: the [model] table (``module``, ``seed``).
        backend: ``"torch"`` or ``"jax"``.
        vocab_size: the data's vocabulary size (logits must have at least this many columns).
        seq_len: the training context.

    Returns:
        The torch module, or an equinox module ``model(tokens) -> (logits, hidden | None)``.

    Raises:
        ConfigError: bad path, missing attribute, wrong signature, wrong type or backend, or a
            forward that fails or returns logits of the wrong shape.
    """
    factory = load_factory(spec.module)
    kwargs: dict[str, Any] = {"vocab_size": vocab_size, "seq_len": seq_len}
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature (a builtin): just call it
        sig = None
    if sig is not None:
        if "seed" in sig.parameters:
            kwargs["seed"] = spec.seed
        try:
            sig.bind(**kwargs)
        except TypeError as err:
            raise ConfigError(
                f"model.module={spec.module!r} must accept factory(vocab_size=..., seq_len=...) "
                f"({err})"
            ) from err
    if backend == "torch":
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = factory(**kwargs)
        return _check_torch(model, spec.module, vocab_size, seq_len)
    return _check_jax(factory(**kwargs), spec.module, vocab_size, seq_len)


def load_factory(target: str) -> Any:
    """``"package.module:attr.path"`` -> the callable it names (``ConfigError`` otherwise)."""
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


def _check_torch(model: Any, target: str, vocab_size: int, seq_len: int) -> Any:
    from torch import nn

    if not isinstance(model, nn.Module):
        hint = " (an equinox module: set run.backend='jax')" if _is_eqx(model) else ""
        raise ConfigError(
            f"model.module={target!r} returned {type(model).__name__}, not a torch nn.Module "
            f"(run.backend='torch'){hint}"
        )
    import torch

    from tandem_torch import logits_and_hidden

    tokens = torch.zeros((1, seq_len), dtype=torch.long)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            logits, _ = logits_and_hidden(model, dict(model.named_parameters()), tokens)
    except Exception as err:  # noqa: BLE001 - any failure of user code becomes a config error
        raise ConfigError(
            f"model.module={target!r}: forward on tokens (1, {seq_len}) failed: {err}"
        ) from err
    _check_logits(tuple(logits.shape), target, vocab_size, seq_len)
    return model


def _check_jax(model: Any, target: str, vocab_size: int, seq_len: int) -> Any:
    from ._equinox import check_equinox

    try:
        return check_equinox(model, target, vocab_size, seq_len, _check_logits)
    except ImportError as err:
        raise ConfigError(f"run.backend='jax' needs equinox ({err})") from err


def _check_logits(shape: tuple, target: str, vocab_size: int, seq_len: int) -> None:
    if len(shape) != 3 or shape[:2] != (1, seq_len) or shape[2] < vocab_size:
        raise ConfigError(
            f"model.module={target!r}: tokens (1, {seq_len}) gave logits of shape {shape}; "
            f"expected (1, {seq_len}, V) with V >= the data's vocabulary ({vocab_size})"
        )


def _is_eqx(model: Any) -> bool:
    return "equinox" in sys.modules and isinstance(model, sys.modules["equinox"].Module)
