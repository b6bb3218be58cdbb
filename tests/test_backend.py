import importlib.metadata

import numpy as np
import pytest

import tandem_core as tc
from tandem_core import backend as backend_mod


def test_numpy_backend_builtin_and_protocol():
    b = tc.load_backend("numpy")
    assert isinstance(b, tc.Backend) and b.name == "numpy"
    out = b.segment_sum(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([1, 0, 1]), 3)
    np.testing.assert_allclose(out, [[3.0, 4.0], [6.0, 8.0], [0.0, 0.0]])
    state = {"w": np.ones(3)}
    copy = b.copy_state(state)
    copy["w"][0] = 5.0
    assert state["w"][0] == 1.0
    assert b.all_reduce_sum(np.ones(2)) is not None


def test_unknown_backend_lists_installed():
    with pytest.raises(ValueError, match=r"unknown backend 'mxnet'; installed backends: .*numpy"):
        tc.load_backend("mxnet")


def test_registered_backends_include_torch_and_jax():
    assert {"numpy", "torch", "jax"} <= set(tc.available_backends())


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_framework_backends_follow_protocol(name):
    pytest.importorskip(name)
    b = tc.load_backend(name)
    assert isinstance(b, tc.Backend) and b.name == name
    data = b.xp.asarray(np.array([1.0, 2.0, 4.0]))
    ids = b.xp.asarray(np.array([2, 0, 2]))
    np.testing.assert_allclose(np.asarray(b.segment_sum(data, ids, 3)), [2.0, 0.0, 5.0])


class _FakeEntryPoint:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def fake_entry_points(monkeypatch):
    def install(*eps):
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: list(eps))
        backend_mod._entry_points.cache_clear()
        tc.load_backend.cache_clear()

    yield install
    backend_mod._entry_points.cache_clear()
    tc.load_backend.cache_clear()


def test_third_party_backend_by_entry_point(fake_entry_points):
    class MyBackend(tc.NumpyBackend):
        name = "mine"

    fake_entry_points(_FakeEntryPoint("mine", "pkg:MyBackend", MyBackend))
    assert tc.available_backends() == ["mine", "numpy"]
    assert tc.load_backend("mine").name == "mine"


def test_broken_backend_reports_missing_framework(fake_entry_points):
    fake_entry_points(_FakeEntryPoint("gone", "gone:B", ImportError("No module named 'gone'")))
    with pytest.raises(ImportError, match=r"install it with: pip install 'tandem-mixture\[gone\]'"):
        tc.load_backend("gone")


def test_entry_point_not_a_backend(fake_entry_points):
    fake_entry_points(_FakeEntryPoint("bad", "bad:x", object()))
    with pytest.raises(TypeError, match="not a tandem Backend"):
        tc.load_backend("bad")


def test_duplicate_registration_warns(fake_entry_points):
    fake_entry_points(
        _FakeEntryPoint("dup", "a:B", tc.NumpyBackend),
        _FakeEntryPoint("dup", "b:B", tc.NumpyBackend),
    )
    with pytest.warns(RuntimeWarning, match="registered twice"):
        tc.available_backends()
