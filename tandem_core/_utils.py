"""Namespace, dtype and pytree helpers shared by the core. Never imports torch or jax."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import array_api_compat
import array_api_compat.numpy
import numpy as np

Array = Any  # an Array API array (numpy, torch, jax, array-api-strict); see array-api#589

_INT32_MAX = 2**31 - 1


def _family(x: Any) -> str:
    """Top-level module of an array's type (``numpy``, ``torch``, ``jax``/``jaxlib``, ...).

    Plain type checks instead of ``array_api_compat.is_*_array``: those go through
    ``functools.lru_cache``, which ``torch.compile`` traces through with a warning.
    """
    return type(x).__module__.split(".", 1)[0]


def is_torch(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch: none exists before it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_numpy(x: Any) -> bool:
    """Whether ``x`` is a numpy array or scalar."""
    return _family(x) == "numpy"


def namespace(*arrays: Array) -> Any:
    """The Array API namespace of ``arrays`` (``None`` and Python scalars ignored)."""
    arrays = tuple(a for a in arrays if a is not None and not isinstance(a, (int, float, bool)))
    if arrays and all(is_torch(a) for a in arrays):
        return _compat_module("array_api_compat.torch")
    return array_api_compat.array_namespace(*arrays)


def array_device(x: Array) -> Any:
    """The device of ``x`` (``array_api_compat.device`` minus its cached checks on torch)."""
    return x.device if is_torch(x) else array_api_compat.device(x)


def _compat_module(name: str) -> Any:
    module = sys.modules.get(name)
    return module if module is not None else importlib.import_module(name)


def as_namespace(xp: Any) -> Any:
    """Turn an array module (``numpy``, ``torch``, ``jax.numpy``) into its Array API namespace."""
    if xp is None:
        return array_api_compat.numpy
    return namespace(xp.zeros(0))


def is_traced(x: Array) -> bool:
    """Whether ``x`` is abstract (``jax.jit``, ``torch.compile``): its values cannot be read."""
    if is_torch(x):
        return bool(sys.modules["torch"].compiler.is_compiling())
    if is_numpy(x):
        return False
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.core.Tracer):
        return True
    return array_api_compat.is_lazy_array(x) and not array_api_compat.is_jax_array(x)


def float_dtype(x: Array, *, xp: Any) -> Any:
    """The floating dtype to compute in for ``x``: its own if floating, else the default float."""
    if xp.isdtype(x.dtype, "real floating"):
        return x.dtype
    return xp.asarray(0.0).dtype


def safe_increment(count: Array, *, xp: Any, by: Array | int = 1) -> Array:
    """Increment an int32 counter, saturating at the maximum instead of wrapping (optax)."""
    return xp.where(count < _INT32_MAX - by, count + by, xp.full_like(count, _INT32_MAX))


def tree_where(cond: Array, a: Any, b: Any, *, xp: Any) -> Any:
    """``xp.where(cond, a, b)`` leaf by leaf over matching tuples / NamedTuples of arrays."""
    if isinstance(a, tuple):
        if len(a) != len(b):
            raise ValueError(f"tree_where: structures differ ({len(a)} vs {len(b)} leaves)")
        leaves = [tree_where(cond, x, y, xp=xp) for x, y in zip(a, b)]
        return type(a)(*leaves) if hasattr(a, "_fields") else type(a)(leaves)
    if a is None:
        return None
    return xp.where(cond, a, b)


def tree_leaves(tree: Any) -> list:
    """The array leaves of a nest of tuples / NamedTuples, in order (``None`` dropped)."""
    if isinstance(tree, tuple):
        return [leaf for x in tree for leaf in tree_leaves(x)]
    return [] if tree is None else [tree]


def tree_map(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to every array leaf of a nest of tuples / NamedTuples (``None`` kept)."""
    if isinstance(tree, tuple):
        leaves = [tree_map(fn, x) for x in tree]
        return type(tree)(*leaves) if hasattr(tree, "_fields") else type(tree)(leaves)
    if tree is None:
        return None
    return fn(tree)


def to_numpy(x: Array) -> np.ndarray:
    """Copy an array of any supported namespace to a host numpy array (a device-to-host copy)."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except TypeError:  # array-api-strict refuses __array__ on some versions
        return np.from_dlpack(x)
