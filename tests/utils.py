"""Shared test helpers: namespace-checking comparison, jit wrappers, small CLI jobs."""

from __future__ import annotations

import time
from typing import Any

import array_api_compat
import numpy as np

from tandem_core._utils import to_numpy


def name_of(xp: Any) -> str:
    mod = xp.__name__
    if "torch" in mod:
        return "torch"
    if "jax" in mod:
        return "jax"
    if "strict" in mod:
        return "array_api_strict"
    return "numpy"


def same_namespace(array: Any, xp: Any) -> bool:
    return name_of(array_api_compat.array_namespace(array)) == name_of(xp)


def assert_close(
    actual: Any,
    desired: Any,
    *,
    xp: Any,
    rtol: float | None = None,
    atol: float = 0.0,
    dtype: Any = None,
) -> None:
    """Compare an ``xp`` array with a numpy reference: namespace, shape, dtype, values."""
    assert same_namespace(actual, xp), f"result is a {type(actual)}, expected a {name_of(xp)} array"
    want = np.asarray(desired)
    got = to_numpy(actual)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if dtype is not None:
        assert actual.dtype == dtype, f"dtype {actual.dtype} != {dtype}"
    if rtol is None:
        rtol = 1e-6 if got.dtype == np.float64 else 1e-4
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def jit(xp: Any, fn: Any, **kwargs: Any) -> Any:
    """``jax.jit(fn)`` for JAX (so control flow on array values fails loudly), else ``fn``."""
    if name_of(xp) == "jax":
        import jax

        return jax.jit(fn, **kwargs)
    return fn


def asarray(xp: Any, x: Any, dtype: Any = None) -> Any:
    return (
        xp.asarray(np.asarray(x), dtype=dtype) if dtype is not None else xp.asarray(np.asarray(x))
    )


def installed_backends() -> list[str]:
    """The training backends whose framework imports here (the numpy-only session has none)."""
    import importlib.util

    return [name for name in ("torch", "jax") if importlib.util.find_spec(name) is not None]


def a_backend() -> str:
    """An installed training backend's name; skips the test where there is none."""
    import pytest

    names = installed_backends()
    if not names:
        pytest.skip("needs a model backend (torch or jax)")
    return names[0]


def small_job(*extra: str, d_model: int = 32) -> list[str]:
    """``--set`` items of a tiny CLI job (a one-layer GPT, short sequences), then ``extra``.

    A later item overrides an earlier one for the same key.
    """
    return [
        f"model.d_model={d_model}",
        "model.n_layer=1",
        "model.n_head=2",
        "data.seq_len=16",
        "train.batch_per_domain=4",
        "train.val_batch_size=8",
        "train.eval_per_domain=8",
        "train.log_every=10",
        *extra,
    ]


def set_args(*items: str) -> list[str]:
    """``["--set", item, ...]`` for each item."""
    return [arg for item in items for arg in ("--set", item)]


def wait_for_rows(path: Any, rows: int, proc: Any, timeout: float = 300) -> None:
    """Wait until the run ``proc`` (a ``Popen``) has written ``rows`` lines to ``path``.

    Raises ``AssertionError`` when the process ends first or nothing comes within ``timeout``.
    """
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the signal: {proc.communicate()}")
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        time.sleep(0.02)
    raise AssertionError("no progress")
