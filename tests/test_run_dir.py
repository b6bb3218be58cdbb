"""The run directory: one live run per folder, earlier output, stale temporary files, file modes,
metrics lines, and resume refused on another configuration or other data (issue 12)."""

import contextlib
import json
import math
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from utils import installed_backends, set_args, small_job

from tandem_adapters import fingerprint as fp
from tandem_adapters import jobs
from tandem_adapters.cli import main
from tandem_adapters.config import DataConfig
from tandem_adapters.data import from_arrays
from tandem_adapters.run_dir import OUTPUTS, RunDir, RunDirLocked, run_lock

BACKENDS = installed_backends()
needs_backend = pytest.mark.skipif(not BACKENDS, reason="needs torch or jax")
SMALL = small_job(d_model=16)


def _args(run_dir, *extra, steps=20):
    sets = [
        *SMALL,
        f"run.backend={BACKENDS[0]}",
        f'run.run_dir="{run_dir}"',
        f"train.steps={steps}",
    ]
    return [*set_args(*sets, *extra), "-q"]


@contextlib.contextmanager
def _held_elsewhere(path):
    """Another process holding ``path`` as a live run (killed with SIGKILL at the end)."""
    code = "import sys, time\nfrom tandem_adapters.run_dir import RunDir\n"
    code += (
        "rd = RunDir(sys.argv[1], overwrite=True)\nprint('ready', flush=True)\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


# ---------------------------------------------------------------- one live run per directory
def test_a_live_run_dir_is_refused_naming_its_holder(tmp_path):
    run = tmp_path / "run"
    with _held_elsewhere(run) as holder:
        (run / "metrics.jsonl").write_text('{"step": 10}\n')
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(
                RunDirLocked, match=f"in use by another run \\(pid {holder.pid} on "
            ):
                RunDir(run, **kw)
        assert (
            run / "metrics.jsonl"
        ).read_text() == '{"step": 10}\n'  # --overwrite deleted nothing
        RunDir(run, read_only=True)  # data-parallel ranks other than 0 take no lock
        with pytest.raises(RunDirLocked), run_lock(run):  # nor does --seeds' lock on the base
            pass
    # the holder died (SIGKILL): the OS released its lock; its .lock file is no obstacle
    assert (run / ".lock").exists()
    with RunDir(run, overwrite=True) as rd:
        assert not rd.metrics.exists()
    assert not (run / ".lock").exists()


@needs_backend
def test_cli_refuses_a_second_run_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    with _held_elsewhere(run) as holder:
        assert main(["optimize", *_args(run)]) == 1
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and err.count("\n") == 1
    assert main(["optimize", *_args(run)]) == 0  # the holder is gone
    assert not (run / ".lock").exists()


def test_the_lock_is_shared_within_a_process_and_released(tmp_path):
    a = RunDir(tmp_path)
    b = RunDir(tmp_path)  # the same process: shared, counted
    a.close()
    assert (tmp_path / ".lock").exists()
    b.close()
    b.close()  # idempotent
    assert not (tmp_path / ".lock").exists()
    with run_lock(tmp_path):
        RunDir(tmp_path).close()
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()
    rd = RunDir(tmp_path)
    del rd  # garbage collected: released
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------- earlier output
@pytest.mark.parametrize("name", OUTPUTS)
def test_any_earlier_output_needs_resume_or_overwrite(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(FileExistsError, match=f"already holds a run \\({name}\\).*--overwrite"):
        RunDir(tmp_path)
    assert (tmp_path / name).read_text() == "x"
    if name != "checkpoint.npz":  # a run killed before its first checkpoint: nothing to resume
        with pytest.raises(FileNotFoundError, match="before its first one: pass --overwrite"):
            RunDir(tmp_path, resume=True)
    RunDir(tmp_path, overwrite=True).close()
    assert not (tmp_path / name).exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        RunDir(tmp_path / "nowhere", resume=True)
    assert not (tmp_path / "nowhere").exists()


@needs_backend
def test_a_run_killed_before_its_first_checkpoint_is_not_appended_to(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "killed": true}\n')  # all a SIGKILL left
    assert main(["optimize", *_args(run)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["optimize", *_args(run), "--resume"]) == 1
    assert main(["optimize", *_args(run), "--overwrite"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and not any("killed" in r for r in rows)


# ---------------------------------------------------------------- temporary files, modes
def test_stale_temp_files_are_removed_at_start_and_at_resume(tmp_path):
    ours = [
        ".checkpoint.npz.ab12cd34.tmp",
        ".mixture.json.k_9x2pq1.tmp",
        ".metrics.jsonl.0a1b2c3d.tmp",
    ]
    foreign = [
        ".checkpoint.npz.tmp",
        "notes.tmp",
        ".other.ab12cd34.tmp",
        ".checkpoint.npz.ab12cd34.bak",
    ]
    for name in ours + foreign:
        (tmp_path / name).write_bytes(b"x" * 100)
    with RunDir(tmp_path) as rd:
        rd.save_checkpoint({"x": np.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.npz", *foreign])
    for name in ours:
        (tmp_path / name).write_bytes(b"x")
    RunDir(tmp_path, resume=True).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.npz", *foreign])


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_files_follow_the_umask_also_after_a_resume(tmp_path):
    with _umask(0o022), RunDir(tmp_path) as rd:
        rd.write_config({"run": {"backend": "numpy"}})
        rd.append_metrics({"step": 1})
        rd.save_checkpoint({"x": np.arange(3)})
        for f in (rd.config, rd.metrics, rd.checkpoint):
            assert _mode(f) == 0o644, f.name
        rd.rewrite_metrics([{"step": 1}])  # what a resume does
        assert _mode(rd.metrics) == 0o644
    with _umask(0o077), RunDir(tmp_path / "private") as rd:
        rd.write_config({})
        assert _mode(rd.config) == 0o600


# ---------------------------------------------------------------- metrics.jsonl lines
def test_a_partial_last_metrics_line_is_never_a_row_and_is_dropped_at_resume(tmp_path):
    with RunDir(tmp_path) as rd:
        rd.append_metrics({"step": 10})
        rd.save_checkpoint({"x": np.arange(3)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "loss"')  # disk full or SIGKILL mid-line
    assert RunDir(tmp_path, read_only=True).read_metrics() == [{"step": 10}]
    with RunDir(tmp_path, resume=True) as rd:
        assert rd.metrics.read_text() == '{"step": 10}\n'
        rd.append_metrics({"step": 20})
        assert rd.read_metrics() == [{"step": 10}, {"step": 20}]


def test_a_failed_metrics_append_is_taken_back(tmp_path, monkeypatch):
    with RunDir(tmp_path) as rd:
        rd.append_metrics({"step": 10})

        def disk_full(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space"):
            rd.append_metrics({"step": 20})
        monkeypatch.undo()
        assert rd.metrics.read_text() == '{"step": 10}\n'


# ---------------------------------------------------------------- resume: configuration
def test_config_changes_name_the_keys_and_nan_equals_nan():
    old = {"train": {"lr": 0.001, "eta": math.nan, "ks": [1, math.nan]}, "model": {"d": 8}}
    new = {"train": {"lr": 0.01, "eta": math.nan, "ks": [1, math.nan]}, "data": {"x": 1}}
    assert fp.config_changes(old, old) == []
    assert fp.config_changes(old, new) == [
        "data.x: (absent) -> 1",
        "model.d: 8 -> (absent)",
        "train.lr: 0.001 -> 0.01",
    ]
    # a key added by a later tandem resumes when the new run keeps its default
    defaults = {"data": {"x": 1, "y": 2}, "train": {"lr": 0.5}}
    assert fp.config_changes(old, new, defaults) == [
        "model.d: 8 -> (absent)",
        "train.lr: 0.001 -> 0.01",
    ]
    assert fp.config_changes(old, {**new, "data": {"x": 3}}, defaults)[0] == "data.x: 1 -> 3"


@needs_backend
def test_resume_refusal_names_the_key_and_nan_configs_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert main(["optimize", *_args(run)]) == 0
    assert main(["optimize", *_args(run, "train.lr=0.01"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "different configuration (train.lr: 0.003 -> 0.01)" in err and err.count("\n") == 1
    real = jobs._fingerprint

    def with_nan(cfg, run):  # a plugin method's key holding NaN (no range check)
        out = real(cfg, run)
        out["config"]["train"]["plugin_eta"] = math.nan
        return out

    monkeypatch.setattr(jobs, "_fingerprint", with_nan)
    nan = tmp_path / "nan"
    assert main(["optimize", *_args(nan)]) == 0
    assert main(["optimize", *_args(nan), "--resume"]) == 0


# ---------------------------------------------------------------- resume: data
def _write_domains(folder, names=("web", "code", "news")):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "eps"])
    for name in names:
        lines = [" ".join([name, *rng.choice(words, 12)]) for _ in range(60)]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


@needs_backend
def test_resume_on_changed_data_is_refused_naming_the_change(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    _write_domains(data)
    sets = [f'data.path="{data}"', "data.val_fraction=0.1"]
    assert main(["optimize", *_args(run, *sets)]) == 0
    web = (data / "web.txt").read_text()
    (data / "web.txt").write_text(web.replace("alpha", "ALPHA"))  # same size, other text
    assert main(["optimize", *_args(run, *sets), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "other data (data.path/web.txt: content changed" in err and err.count("\n") == 1
    (data / "web.txt").write_text(web)
    assert main(["optimize", *_args(run, *sets), "--resume"]) == 0  # the same data again
    _write_domains(data, ["extra"])
    assert main(["optimize", *_args(run, *sets), "--resume"]) == 1  # no raw ValueError
    err = capsys.readouterr().err
    assert "data.path/extra.txt added" in err and "training domain 'extra' added" in err


def test_big_files_are_fingerprinted_by_sampled_blocks(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(4 << 30)  # 4 GiB, sparse: reading it all would take seconds
    start = time.perf_counter()
    first = fp.file_fingerprint(big)
    assert time.perf_counter() - start < 1.0 and first[0] == 4 << 30
    for where in (0, (4 << 30) - 1):  # the first and last blocks are always read
        with open(big, "r+b") as f:
            f.seek(where)
            f.write(b"\1")
        assert fp.file_fingerprint(big) != first
        with open(big, "r+b") as f:
            f.seek(where)
            f.write(b"\0")
    assert fp.file_fingerprint(big) == first
    with open(big, "r+b") as f:
        f.truncate((4 << 30) + 2)
    assert fp.data_changes(
        {"files": {"data.path/big.bin": first}},
        {"files": {"data.path/big.bin": fp.file_fingerprint(big)}},
    ) == [f"data.path/big.bin: {4 << 30} -> {(4 << 30) + 2} bytes"]


def test_in_memory_corpora_and_suites_are_fingerprinted():
    tokens = {"a": np.arange(50) % 7, "b": np.arange(300_000) % 11}  # b: sampled blocks
    cfg = DataConfig()
    before = fp.data_fingerprint(cfg, from_arrays(tokens))
    changed = dict(tokens, a=np.where(np.arange(50) == 3, 5, tokens["a"]))
    after = fp.data_fingerprint(cfg, from_arrays(changed))
    assert fp.data_changes(before, after) == ["training domain 'a': content changed (50 tokens)"]
    assert fp.data_changes(before, before) == []
    suite = fp.data_fingerprint(DataConfig(), None)
    other = fp.data_fingerprint(DataConfig(suite_tokens_per_domain=2000), None)
    assert fp.data_changes(suite, other)[0].startswith("suite: {")


def test_a_checkpoint_without_a_data_fingerprint_resumes_with_a_note():
    notes = []
    fp.check_resume(
        {"config": {"a": {"b": 1}}}, {"config": {"a": {"b": 1}}, "data": {}}, "ck", notes.append
    )
    assert "no data fingerprint" in notes[0]
    with pytest.raises(fp.DataChangedError, match="vocab size: 5 -> 6"):
        fp.check_resume(
            {"config": {}, "data": {"vocab_size": 5}},
            {"config": {}, "data": {"vocab_size": 6}},
            "ck",
        )
