"""The CLI on bad input and faults: one line on stderr, the right exit status, no traceback.

Exit statuses: 2 configuration, 1 data or a failed run or a file that cannot be written, 130 /
143 interrupted. Whatever can be checked before the run starts is, so nothing is half-written.
"""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from utils import a_backend, installed_backends, set_args, small_job, wait_for_rows

from tandem_adapters.cli import main
from tandem_adapters.commands._common import run_problems, verdict
from tandem_core.run import RunResult

SMALL = small_job("train.probe_steps=2", "train.free_steps=2", "train.steps=12")
needs_torch = pytest.mark.skipif("torch" not in installed_backends(), reason="needs torch")


def _run(capsys, command: str, run_dir: Path, *items: str, extra=(), backend=None) -> tuple:
    """``main([command, ...])`` on a small job; returns (status, stderr)."""
    backend = backend or a_backend()
    args = set_args(*SMALL, f"run.backend={backend}", f"run.run_dir={json.dumps(str(run_dir))}")
    status = main([command, *args, *set_args(*items), *extra, "-q"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("tandem: "), err
    return lines[0]


def _folder_without_validation(root: Path) -> Path:
    for name in ("a", "b"):
        (root / f"{name}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.txt").write_text("".join(f"doc {name} {i}\n" for i in range(200)))
    return root


# ---- configuration: exit 2, the key named, nothing created --------------------------------------


@pytest.mark.parametrize(
    "items, message",
    [
        (["data.suite=nope"], "data.suite='nope' is not one of"),
        (["data.suite_vocab_size=1"], "data.suite_vocab_size must be in [8, 65536]"),
        (
            ['data.path="x"', 'data.target_path="t.txt"', "data.val_fraction=0.1"],
            "data.val_fraction and data.target_path are exclusive",
        ),
        (["model.n_head=3"], "model.n_head=3 must divide model.d_model=32"),
        (["train.weight_decay=nan"], "weight_decay must be finite and >= 0, got nan"),
        (["train.smoothing=nan"], "smoothing must be in [0, 1), got nan"),
        (["train.floor=0.3"], "train.floor=0.3 is infeasible for the data's M=5 domains"),
        (["train.floor=nan"], "floor must be finite and >= 0, got nan"),
        (["train.eta_alpha=inf"], "eta_alpha must be > 0 and finite, got inf"),
        (["train.gamma=inf"], "gamma must be > 0 and finite, got inf"),
        (["train.eps=inf"], "eps must be > 0 and finite, got inf"),
        (["train.lr=inf"], "lr must be > 0 and finite, got inf"),
        (["train.steps=2"], "train.steps=2 ends before method='tandem' updates the mixture"),
        pytest.param(["backend.device=bogus"], "backend.device='bogus'", marks=needs_torch),
        pytest.param(["backend.threads=100000"], "backend.threads=100000", marks=needs_torch),
    ],
    ids=[
        "suite",
        "suite_vocab",
        "target_and_fraction",
        "n_head",
        "weight_decay_nan",
        "smoothing_nan",
        "floor_for_M",
        "floor_nan",
        "eta_alpha_inf",
        "gamma_inf",
        "eps_inf",
        "lr_inf",
        "steps_before_first_update",
        "device_bogus",
        "threads",
    ],
)
def test_bad_config_is_one_line_exit_2_before_any_write(tmp_path, capsys, items, message):
    backend = "torch" if any(i.startswith("backend.") for i in items) else None
    status, err = _run(capsys, "optimize", tmp_path / "r", *items, backend=backend)
    assert status == 2 and message in _one_line(err)
    assert not (tmp_path / "r").exists()


@needs_torch
def test_cuda_device_without_cuda_is_a_config_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, err = _run(capsys, "optimize", tmp_path / "r", "backend.device=cuda", backend="torch")
    assert status == 2 and "CUDA is not available here" in _one_line(err)


def test_data_folder_without_validation_fails_before_the_model(tmp_path, capsys):
    data = _folder_without_validation(tmp_path / "data")
    status, err = _run(capsys, "optimize", tmp_path / "r", f"data.path={json.dumps(str(data))}")
    assert status == 2 and "has no validation data" in _one_line(err)
    assert "data.target_path" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"train = 5\n", "train = 5 must be a table"),
        (b"[train]\nlr = 0.1 # \xff\xfe\n", ":2: not valid UTF-8"),
        (b"[train\n", "invalid TOML"),
        (None, "cannot read it"),
    ],
    ids=["non_table", "not_utf8", "invalid", "missing"],
)
def test_bad_config_file_is_named(tmp_path, capsys, content, message):
    path = tmp_path / "job.toml"
    if content is not None:
        path.write_bytes(content)
    extra = ["--config", str(path), "--set", "train.lr=0.1"]  # an override on top, too
    status, err = _run(capsys, "optimize", tmp_path / "r", extra=extra)
    assert status == 2 and message in _one_line(err) and "job.toml" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{bad", "not valid JSON"),
        ('{"format": "tandem-mixture", "average": {"a": 0.9, "b": 0.9}}', "not a distribution"),
        ("[1]", "no 'average' weights"),
        (None, "No such file or directory"),
    ],
    ids=["bad_json", "not_a_distribution", "other_layout", "missing"],
)
def test_bad_mixture_option_is_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "mixture.json"
    if content is not None:
        path.write_text(content)
    for command in ("train", "compare"):
        status, err = _run(capsys, command, tmp_path / "r", extra=["--mixture", str(path)])
        assert status == 2 and message in _one_line(err) and "--mixture" in err
    assert not (tmp_path / "r").exists()


# ---- data: exit 1, the file named ---------------------------------------------------------------


def test_misleading_data_paths_are_named_for_what_they_are(tmp_path, capsys):
    data = _folder_without_validation(tmp_path / "data")
    a_file = json.dumps(str(data / "a.txt"))
    status, err = _run(capsys, "optimize", tmp_path / "r", f"data.path={a_file}")
    assert status == 1 and "a.txt: is a file; the training data must be a folder" in err
    missing = json.dumps(str(tmp_path / "nope.txt"))
    items = (f"data.path={json.dumps(str(data))}", f"data.target_path={missing}")
    status, err = _run(capsys, "optimize", tmp_path / "r", *items)
    assert status == 1 and "nope.txt: target file or folder not found" in _one_line(err)
    items = (f"data.path={json.dumps(str(data))}", "data.val_fraction=0.1")
    anchor = ["--weighting", "adapt", "--anchor", str(tmp_path / "no-anchor")]
    status, err = _run(capsys, "train", tmp_path / "r", *items, extra=anchor)
    assert status == 1 and "no-anchor: anchor file or folder not found" in _one_line(err)
    assert not (tmp_path / "r").exists()


# ---- the run directory and the disk -------------------------------------------------------------


def test_run_dir_that_is_or_is_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, err = _run(capsys, "optimize", tmp_path / "file")
    assert status == 1 and "file: is a file, not a folder (run.run_dir)" in _one_line(err)
    status, err = _run(capsys, "optimize", tmp_path / "file" / "sub")
    assert status == 1 and "cannot be under it" in _one_line(err)


def test_run_dir_not_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # root can write anywhere
    status, err = _run(capsys, "optimize", tmp_path / "r")
    assert status == 1 and "folder not writable (run.run_dir)" in _one_line(err)
    assert str(tmp_path) in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_write_errors_during_the_run_are_one_line(tmp_path, capsys, monkeypatch, code):
    import tandem_core.state as state_mod

    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))  # no file name, as np.savez raises it

    monkeypatch.setattr(state_mod.np, "savez", full)
    status, err = _run(capsys, "optimize", tmp_path / "r", "train.steps=8")
    assert status == 1 and os.strerror(code) in _one_line(err) and str(tmp_path / "r") in err


# ---- interrupts ---------------------------------------------------------------------------------


def test_ctrl_c_while_the_data_loads(tmp_path, capsys, monkeypatch):
    import tandem_adapters.jobs as jobs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "load_corpus", interrupted)
    status, err = _run(capsys, "optimize", tmp_path / "r")
    assert status == 130 and "interrupted" in _one_line(err)
    assert not (tmp_path / "r").exists()


# ---- runs that learned nothing (issue 12, section 2) --------------------------------------------


@pytest.mark.parametrize("backend", installed_backends())
def test_a_diverged_run_fails_after_writing_its_outputs(tmp_path, capsys, backend):
    run = tmp_path / "r"
    status, err = _run(capsys, "optimize", run, "train.lr=1e6", "train.steps=12", backend=backend)
    line = _one_line(err)
    # torch's losses turn non-finite (no update is applied); JAX's stay finite but enormous
    assert status == 1 and "for diagnosis only" in line
    assert "non-finite loss" in line or "the proxy diverged" in line
    assert (run / "mixture.json").exists()  # still written, for diagnosis


def _result(method: str, **last) -> RunResult:
    m = np.full(2, 0.5)
    row = {"step": 10, "nonfinite": 0, "mixture_updates": 2, "skipped_updates": 0, **last}
    return RunResult(("a", "b"), method, m, m, m[None], 10, metrics=[row])


@pytest.mark.parametrize(
    "method, last, problem",
    [
        ("tandem", {}, None),
        ("tandem", {"nonfinite": 5}, None),  # half the steps: not yet a failure
        ("tandem", {"nonfinite": 6, "first_nonfinite": 3}, "6 of 10 proxy steps"),
        ("tandem", {"mixture_updates": 0}, "no mixture update was applied"),
        ("doremi", {"mixture_updates": 0, "skipped_updates": 4}, "(4 skipped"),
        ("natural", {"mixture_updates": 0}, None),  # a fixed mixture learns nothing by design
    ],
)
def test_run_problems(method, last, problem):
    problems = run_problems(_result(method, **last))
    assert problems == [] if problem is None else problem in " ".join(problems)


def test_a_finite_but_exploded_loss_is_a_diverged_run():
    assert run_problems(_result("tandem", train_loss_avg=3.0), vocab_size=32) == []
    (problem,) = run_problems(_result("tandem", train_loss_avg=5e13), vocab_size=32)
    assert "the proxy diverged: its last training loss 5e+13" in problem
    assert run_problems(_result("tandem", train_loss_avg=5e13)) == []  # no vocabulary: no check


@pytest.mark.parametrize(
    "alpha, want",
    [
        ([0.2000000003, 0.2, 0.2, 0.2, 0.1999999997], ["[MISS]", "[MISS]"]),
        ([0.198, 0.2, 0.2, 0.2, 0.202], ["[MISS]", "[MISS]"]),  # within the margin
        ([0.1, 0.2, 0.2, 0.2, 0.3], ["[ok]", "[ok]"]),
        ([0.3, 0.2, 0.2, 0.2, 0.1], ["[MISS]", "[MISS]"]),
    ],
)
def test_known_answer_checks_use_a_margin(alpha, want):
    known = {"down": ["noise"], "up": ["target_like"]}
    domains = ("noise", "b", "c", "d", "target_like")
    lines = verdict(domains, np.array(alpha), known)
    assert [line.split()[0] for line in lines] == want


# ---- torchrun (--nproc) -------------------------------------------------------------------------

KILLED = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "cli.py", line 101, in <module>
[rank0]: RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.
W1130 17:58:21.367000 1473 torch/distributed/elastic/multiprocessing/api.py:1028] Sending ...
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 1492)  (SIGTERM)
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 1493)  (SIGKILL)
  traceback : Signal 9 (SIGKILL) received by PID 1493
======================================================"""


@pytest.mark.parametrize(
    "text, status, summary",
    [
        (KILLED, 1, "rank 1 was killed by SIGKILL"),
        (
            KILLED.replace("rank      : 1", "rank      : 0").replace(
                "exitcode  : -9", "exitcode  : 1"
            ),
            1,
            "rank 0 failed: RuntimeError: [gloo",
        ),
        (KILLED.replace("exitcode  : -9", "exitcode  : 2"), 2, None),  # its own tandem: line
        (KILLED.replace("exitcode  : -9", "exitcode  : 143"), 143, None),
        ("something odd\n", 1, "torchrun exit status 1): something odd"),
    ],
    ids=["killed", "exception", "config_error", "sigterm", "unknown"],
)
def test_torchrun_failures_are_summarised(text, status, summary):
    pytest.importorskip("torch")
    from tandem_torch.launch import summarize_failure

    got_status, got = summarize_failure(text.splitlines(), 1)
    assert got_status == status
    assert got is None if summary is None else summary in got


def _workers(parent: int) -> list[int]:
    """The torchrun ranks below ``parent`` (Linux /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    torchrun = children.get(parent, [])
    return sorted(w for t in torchrun for w in children.get(t, []))


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks in /proc")
@pytest.mark.parametrize("how, status", [("sigint", 130), ("sigterm", 143), ("kill_rank", 1)])
def test_nproc_stop_and_crash_are_one_line(tmp_path, how, status):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    args = [*set_args(*SMALL, "train.log_every=2", "train.steps=100000", "backend.threads=1")]
    args += [*set_args(f"run.run_dir={json.dumps(str(run))}"), "--nproc", "2", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem_adapters.cli", "optimize", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        wait_for_rows(run / "metrics.jsonl", 2, proc)
        if how == "sigint":  # Ctrl-C: the terminal signals the whole group
            os.killpg(proc.pid, signal.SIGINT)
        elif how == "sigterm":  # a scheduler stops the job: only the launcher gets it
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(_workers(proc.pid)[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status, err
    assert "Traceback" not in err and "[rank" not in err
    line = _one_line(err)
    if how == "kill_rank":
        assert "rank 1 was killed by SIGKILL" in line
    else:
        assert "continue with --resume" in line and (run / "checkpoint.npz").exists()
