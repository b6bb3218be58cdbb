"""Fault injection (issue 12): SIGKILL a run at random points, also inside its writes.

Each seed starts ``tandem optimize`` in a fresh process, kills it (after some metric rows, after
a random time, or while a checkpoint, a metrics line, config.toml, mixture.json or mixture.png is
half written: the child's writer stalls, the parent kills it), then recovers the way a user
would: ``--resume`` when a checkpoint exists (some seeds crash the resume too), else ``--resume``
is refused naming ``--overwrite``, and ``--overwrite`` starts again. The result must be
bit-identical to an uninterrupted run (mixture, trajectory, metrics) and the directory must hold
no temporary file and no lock file.

The runs are forked from a server that imported torch once (``multiprocessing`` forkserver), so
a run costs its own work, not an interpreter and torch start.
"""

import io
import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import pytest
from utils import installed_backends, set_args, small_job

from tandem_adapters.run_dir import OUTPUTS
from tandem_core.state import temp_files

pytestmark = pytest.mark.slow

SEEDS = 20
STEPS = 24
EVERY = 3  # log and checkpoint every 3 steps (checkpoints mid-episode)
SETS = small_job(
    f"train.log_every={EVERY}",
    "train.probe_steps=3",
    "train.free_steps=4",
    f"run.checkpoint_every={EVERY}",
    f"train.steps={STEPS}",
    d_model=16,
)
WRITES = {  # file -> how many times a run writes it (the n-th write stalls)
    "checkpoint.npz": STEPS // EVERY + 1,
    "config.toml": 1,
    "mixture.json": 1,
    "mixture.png": 1,
}
BACKEND = "torch"
# imported once by the fork server (none of them starts a thread)
PRELOAD = [
    "torch",
    "torch._inductor",  # use_deterministic_algorithms imports it (1.5 s)
    "tandem_torch",
    "tandem_adapters.cli",
    "tandem_adapters.jobs",
    "matplotlib.pyplot",
]


def _argv(run_dir, *extra):
    sets = [*SETS, f"run.backend={BACKEND}", f'run.run_dir="{run_dir}"']
    return ["optimize", *set_args(*sets), "-q", *extra]


# ---------------------------------------------------------------- in the child process
def _stall(marker):
    Path(marker).touch()
    time.sleep(300)  # the parent kills us here


def _stall_in_write(fault):
    """The n-th atomic write of ``fault["file"]`` writes part of its bytes, then stalls."""
    import tandem_adapters.plots as plots
    import tandem_adapters.run_dir as run_dir
    import tandem_core.state as state

    real, calls = state.atomic_write, {"n": 0}

    def atomic_write(path, write):
        if Path(path).name != fault["file"]:
            return real(path, write)
        calls["n"] += 1
        if calls["n"] != fault["nth"]:
            return real(path, write)
        buf = io.BytesIO()
        if callable(write):
            write(buf)
        else:
            buf.write(write.encode() if isinstance(write, str) else write)
        data = buf.getvalue()

        def partial(f):
            f.write(data[: int(len(data) * fault["fraction"])])
            f.flush()
            _stall(fault["marker"])

        return real(path, partial)

    state.atomic_write = run_dir.atomic_write = plots.atomic_write = atomic_write


def _stall_in_append(fault):
    """The n-th metrics row is half written, then the process stalls."""
    from tandem_adapters.run_dir import RunDir, _json_default

    real, calls = RunDir.append_metrics, {"n": 0}

    def append_metrics(self, row):
        calls["n"] += 1
        if calls["n"] != fault["nth"]:
            return real(self, row)
        line = json.dumps(row, default=_json_default).encode()
        with open(self.metrics, "ab") as f:
            f.write(line[: len(line) // 2])
            f.flush()
        _stall(fault["marker"])

    RunDir.append_metrics = append_metrics


def _child(argv, log, fault):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import torch

    torch.set_num_threads(1)
    if fault.get("kind") == "write":
        _stall_in_write(fault)
    elif fault.get("kind") == "append":
        _stall_in_append(fault)
    from tandem_adapters.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


# ---------------------------------------------------------------- in the test
@pytest.fixture(scope="module")
def ctx():
    if BACKEND not in installed_backends():
        pytest.skip("needs torch")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start(ctx, argv, log, fault=None):
    proc = ctx.Process(target=_child, args=(argv, str(log), fault or {}))
    proc.start()
    return proc


def _run(ctx, argv, log):
    """Run to the end: ``(exit status, what it printed)``."""
    log = Path(log)
    before = log.stat().st_size if log.exists() else 0
    proc = _start(ctx, argv, log)
    proc.join(300)
    with open(log, "rb") as f:
        f.seek(before)
        return proc.exitcode, f.read().decode(errors="replace")


def _kill_when(proc, run_dir, fault, started):
    """SIGKILL ``proc`` when the fault's moment comes (or let it finish if it never does)."""
    metrics = run_dir / "metrics.jsonl"
    while proc.is_alive():
        if fault["kind"] in ("write", "append"):
            due = Path(fault["marker"]).exists()
        elif fault["kind"] == "rows":
            due = metrics.exists() and metrics.read_bytes().count(b"\n") >= fault["rows"]
        else:
            due = time.perf_counter() - started >= fault["after_s"]
        if due:
            proc.kill()
            break
        time.sleep(0.002)
    proc.join(60)
    return proc.exitcode


def _fault(rng, seed, tmp_path, duration):
    marker = str(tmp_path / f"stalled-{seed}")
    kind = ["rows", "time", "write", "write", "append", "write"][seed % 6]
    if kind == "rows":
        return {"kind": kind, "rows": rng.randint(1, STEPS // EVERY)}
    if kind == "time":
        return {"kind": kind, "after_s": rng.uniform(0.0, 1.1 * duration)}
    if kind == "append":
        return {"kind": kind, "nth": rng.randint(1, STEPS // EVERY), "marker": marker}
    file = "checkpoint.npz" if seed % 6 != 5 else rng.choice(sorted(WRITES))
    return {
        "kind": kind,
        "file": file,
        "nth": rng.randint(1, WRITES[file]),
        "fraction": rng.choice([0.0, rng.random(), 1.0]),  # 1.0: complete, not yet renamed
        "marker": marker,
    }


def _outputs(run_dir):
    doc = json.loads((run_dir / "mixture.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return doc["trajectory"], doc["average"], doc["last"], rows


def _recover(ctx, run_dir, log, rng, crash_again):
    """What a user does after a crash (``crash_again``: the resume is killed too)."""
    if not (run_dir / "checkpoint.npz").exists():
        code, out = _run(ctx, _argv(run_dir, "--resume"), log)
        assert code == 1 and "no checkpoint" in out, out
        if any((run_dir / name).exists() for name in OUTPUTS):  # never appended to
            code, out = _run(ctx, _argv(run_dir), log)
            assert code == 1 and "--overwrite" in out, out
            code, out = _run(ctx, _argv(run_dir, "--overwrite"), log)
        else:
            code, out = _run(ctx, _argv(run_dir), log)
        assert code == 0, out
        return
    if crash_again:
        proc = _start(ctx, _argv(run_dir, "--resume"), log)
        fault = {"kind": "rows", "rows": rng.randint(1, STEPS // EVERY)}
        _kill_when(proc, run_dir, fault, time.perf_counter())
        return _recover(ctx, run_dir, log, rng, crash_again=False)
    code, out = _run(ctx, _argv(run_dir, "--resume"), log)
    assert code == 0, out


def test_sigkill_anywhere_then_resume_is_bitwise_and_leaves_no_temp_file(ctx, tmp_path):
    whole = tmp_path / "whole"
    start = time.perf_counter()
    code, out = _run(ctx, _argv(whole), tmp_path / "whole.log")
    assert code == 0, out
    duration = time.perf_counter() - start
    expected = _outputs(whole)
    kills = {}
    for seed in range(SEEDS):
        rng = random.Random(seed)
        fault = _fault(rng, seed, tmp_path, duration)
        run_dir, log = tmp_path / f"cut-{seed}", tmp_path / f"cut-{seed}.log"
        started = time.perf_counter()
        code = _kill_when(_start(ctx, _argv(run_dir), log, fault), run_dir, fault, started)
        kills[seed] = (fault, code)
        if fault["kind"] == "write" and code == -9:  # killed inside the write: its temp file
            assert temp_files(run_dir / fault["file"]), f"seed {seed}: {fault}"
        if fault["kind"] == "append" and code == -9:  # killed mid-line
            assert not (run_dir / "metrics.jsonl").read_bytes().endswith(b"\n")
        _recover(ctx, run_dir, log, rng, crash_again=seed % 4 == 3)
        got = _outputs(run_dir)
        assert got == expected, f"seed {seed}: {fault} (exit {code}): another result"
        left = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))
        assert left == [], f"seed {seed}: {fault}: left {left}"
    killed = [f["kind"] for f, code in kills.values() if code == -9]
    assert len(killed) >= SEEDS * 3 // 4 and killed.count("write") >= 6, kills  # real kills
