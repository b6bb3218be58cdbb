"""Test configuration: the scipy-style ``xp`` fixture over the installed array namespaces.

``TANDEM_TEST_BACKENDS`` (comma-separated: numpy, array_api_strict, torch, jax) narrows the
namespaces; by default every importable one runs. JAX runs with x64 and strict rank promotion,
so core code that relies on implicit rank broadcasting or silent downcasts fails here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

KNOWN = ("numpy", "array_api_strict", "torch", "jax")


def selected_backends() -> tuple[str, ...]:
    raw = os.environ.get("TANDEM_TEST_BACKENDS", "")
    names = tuple(n.strip() for n in raw.split(",") if n.strip()) or KNOWN
    unknown = set(names) - set(KNOWN)
    if unknown:
        raise pytest.UsageError(
            f"TANDEM_TEST_BACKENDS has unknown names {sorted(unknown)}; use {KNOWN}"
        )
    return names


def _namespaces() -> list:
    params = []
    for name in selected_backends():
        try:
            if name == "numpy":
                import array_api_compat.numpy as xp
            elif name == "array_api_strict":
                import array_api_strict as xp
            elif name == "torch":
                import array_api_compat.torch as xp
            else:
                import jax

                jax.config.update("jax_enable_x64", True)
                jax.config.update("jax_numpy_rank_promotion", "raise")
                import jax.numpy as xp
        except ImportError:
            continue
        params.append(pytest.param(xp, id=name))
    return params


NAMESPACES = _namespaces()


@pytest.fixture(params=NAMESPACES)
def xp(request):
    """An Array API namespace (numpy, array_api_strict, torch, jax.numpy)."""
    return request.param


def pytest_report_header(config):
    return f"tandem array namespaces: {[p.id for p in NAMESPACES]}"


@pytest.fixture(params=__import__("backend_kits").available_kits())
def kit(request):
    """One backend's test kit (torch, jax): the same test body runs on both trainers."""
    return request.param()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_configure(config):
    # JAX: compile each step function once per machine, not once per trainer/test (CPU XLA
    # executables are cacheable); the cache lives in pytest's cache directory
    try:
        import jax
    except ImportError:
        return
    cache = config.cache.mkdir("jax-compilation") if config.cache is not None else None
    if cache is not None:
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True, scope="session")
def _token_cache_in_a_temporary_folder(tmp_path_factory):
    """Tokenized text is cached under ``$TANDEM_CACHE``: never in the user's home during tests."""
    old = os.environ.get("TANDEM_CACHE")
    os.environ["TANDEM_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if old is None:
        os.environ.pop("TANDEM_CACHE", None)
    else:
        os.environ["TANDEM_CACHE"] = old


@pytest.fixture
def count_encode(monkeypatch):
    """Count the byte tokenizer's ``encode`` calls: ``calls[0]`` (a cache hit makes none)."""
    from tandem_adapters.data.tokenizer import ByteTokenizer

    calls = [0]
    encode = ByteTokenizer.encode

    def counted(self, text):
        calls[0] += 1
        return encode(self, text)

    monkeypatch.setattr(ByteTokenizer, "encode", counted)
    return calls
