import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from utils import asarray, assert_close

import tandem_core as tc
from tandem_core._utils import to_numpy
from tandem_core.state import atomic_write, temp_files


def _trained_state(xp, history=3):
    t = tc.tandem(eta_alpha=2.0, step="eg", normalize="rms", history=history)
    state = t.init(4, xp=xp, dtype=xp.float64)
    for k in range(4):
        state = t.update(state, asarray(xp, [0.01 * k, -0.02, 0.0, 0.03]))
    return t, state


def _assert_same_state(a, b, xp):
    leaves_a = _leaves(a)
    leaves_b = _leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        assert_close(x, to_numpy(y), xp=xp, rtol=0)
        assert str(to_numpy(x).dtype) == str(to_numpy(y).dtype)


def _leaves(tree):
    if isinstance(tree, tuple):
        return [leaf for sub in tree for leaf in _leaves(sub)]
    return [tree]


def test_roundtrip_same_namespace(xp, tmp_path):
    t, state = _trained_state(xp)
    path = tc.save_state(tmp_path / "s.npz", state, metadata={"step": 4})
    back = tc.load_state(path, xp=xp)
    assert type(back) is tc.MixtureState and type(back.inner[0]).__name__ == "RmsState"
    _assert_same_state(back, state, xp)
    assert tc.read_metadata(path) == {"step": 4}
    # and the loaded state keeps working
    t.update(back, asarray(xp, [0.0, 0.0, 0.0, 0.1]))


@pytest.mark.parametrize("target", ["numpy", "torch", "jax"])
def test_roundtrip_across_namespaces(xp, tmp_path, target):
    if target == "torch":
        target_xp = pytest.importorskip("array_api_compat.torch")
    elif target == "jax":
        target_xp = pytest.importorskip("jax.numpy")
    else:
        import array_api_compat.numpy as target_xp
    _, state = _trained_state(xp)
    tc.save_state(tmp_path / "s.npz", state)
    back = tc.load_state(tmp_path / "s.npz", xp=target_xp)
    _assert_same_state(back, state, target_xp)


def test_template_structure_is_checked(tmp_path):
    _, state = _trained_state(np)
    tc.save_state(tmp_path / "s.npz", state)
    other = tc.tandem().init(4)  # a different chain: no RmsState
    with pytest.raises(tc.CorruptStateError, match="structure differs"):
        tc.load_state(tmp_path / "s.npz", like=other)
    same_kind = tc.tandem(eta_alpha=9.0, step="eg", normalize="rms", history=3).init(4)
    back = tc.load_state(tmp_path / "s.npz", like=same_kind)
    np.testing.assert_array_equal(back.alpha, state.alpha)


def test_truncated_file_is_reported(tmp_path):
    _, state = _trained_state(np)
    path = tc.save_state(tmp_path / "s.npz", state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(tc.CorruptStateError, match="truncated or corrupted"):
        tc.load_state(path)


def test_tampered_array_fails_checksum(tmp_path):
    _, state = _trained_state(np)
    path = tc.save_state(tmp_path / "s.npz", state)
    with np.load(path) as f:
        payload = {k: f[k] for k in f.files}
    payload["alpha"] = payload["alpha"] * 2
    np.savez(path, **payload)
    with pytest.raises(tc.CorruptStateError, match="checksum mismatch"):
        tc.load_state(path)


def test_foreign_and_future_files(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.ones(2))
    with pytest.raises(tc.CorruptStateError, match="not a tandem state"):
        tc.load_state(tmp_path / "plain.npz")
    meta = {"format": "tandem-state", "version": 99, "tree": {}, "sha256": ""}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "future.npz", __meta__=blob)
    with pytest.raises(tc.CorruptStateError, match="newer than 1"):
        tc.load_state(tmp_path / "future.npz")
    with pytest.raises(FileNotFoundError):
        tc.load_state(tmp_path / "missing.npz")


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    _, state = _trained_state(np)
    path = tc.save_state(tmp_path / "s.npz", state, metadata={"v": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tc.save_state(path, state, metadata={"v": 2})
    monkeypatch.undo()
    assert tc.read_metadata(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file left behind


def test_generic_trees_with_dicts_lists_and_scalars(tmp_path):
    tree = {
        "params": [np.arange(3.0), np.zeros((2, 2), np.float32)],
        "step": 7,
        "name": "u",
        "none": None,
    }
    tc.save_state(tmp_path / "t.npz", tree)
    back = tc.load_state(tmp_path / "t.npz")
    assert back["step"] == 7 and back["name"] == "u" and back["none"] is None
    np.testing.assert_array_equal(back["params"][0], np.arange(3.0))
    assert back["params"][1].dtype == np.float32


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_follow_the_umask_and_keep_the_mode_they_replace(tmp_path):
    old = os.umask(0o022)
    try:
        assert _mode(atomic_write(tmp_path / "a.json", "{}")) == 0o644  # as open() creates it
        os.umask(0o027)
        assert _mode(atomic_write(tmp_path / "b.json", b"{}")) == 0o640
        os.chmod(tmp_path / "a.json", 0o600)  # a mode the user chose stays (like open("w"))
        assert _mode(atomic_write(tmp_path / "a.json", "{1}")) == 0o600
        assert _mode(tc.save_state(tmp_path / "s.npz", {"x": np.zeros(2)})) == 0o640
    finally:
        os.umask(old)


def test_temp_files_finds_only_tandems_own_names(tmp_path):
    names = [".s.npz.ab12cd34.tmp", ".s.npz.k_9x2pq1.tmp", ".s.npz.tmp", ".s.npz.ab12cd3.tmp"]
    names += ["s.npz.ab12cd34.tmp", ".t.npz.ab12cd34.tmp", ".s.npz.ab12cd34.tmp.x"]
    for name in names:
        (tmp_path / name).write_text("x")
    assert [p.name for p in temp_files(tmp_path / "s.npz")] == names[:2]
    assert temp_files(tmp_path / "missing" / "s.npz") == []


def test_a_killed_writer_leaves_a_temp_file_that_temp_files_finds(tmp_path):
    code = (
        "import sys, time\n"
        "from tandem_core.state import atomic_write\n"
        "def slow(f):\n"
        "    f.write(b'half'); f.flush(); print('ready', flush=True); time.sleep(60)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    path = tmp_path / "s.npz"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    (left,) = temp_files(path)
    assert left.read_bytes() == b"half" and not path.exists()


@pytest.mark.parametrize(
    "leaf", [np.array([object(), 1], dtype=object), {1, 2}, {"x": [None, {3: 4}.keys()]}]
)
def test_object_leaves_are_refused_before_anything_is_written(tmp_path, leaf):
    path = tmp_path / "s.npz"
    with pytest.raises(TypeError, match="save_state: the leaf at .* dtype object"):
        tc.save_state(path, {"alpha": np.ones(2), "bad": leaf})
    assert list(tmp_path.iterdir()) == []
