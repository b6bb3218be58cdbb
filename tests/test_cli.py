"""The `tandem` CLI end to end: optimize / train / compare / plot, bad configs, resume, faults."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from utils import installed_backends, set_args, small_job, wait_for_rows

from tandem_adapters.cli import main

SMALL = small_job()


def _args(run_dir, *extra, backend=None, steps=60):
    backend = backend or BACKENDS[0]
    sets = [
        *SMALL,
        f"run.backend={backend}",
        f'run.run_dir="{run_dir}"',
        f"train.steps={steps}",
        *extra,
    ]
    return [*set_args(*sets), "-q"]


def _mixture(run_dir):
    return json.loads((run_dir / "mixture.json").read_text())


def _metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("elapsed_s")
    return rows


BACKENDS = installed_backends()
# a model backend is an optional extra: the numpy-only session has neither
needs_backend = pytest.mark.skipif(not BACKENDS, reason="needs torch or jax")


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimize_moves_weight_off_noise(tmp_path, backend, capsys):
    run = tmp_path / "run"
    assert main(["optimize", *_args(run, backend=backend, steps=200)]) == 0
    doc = _mixture(run)
    assert doc["method"] == "tandem" and doc["backend"] == backend
    assert doc["average"]["noise"] < 1 / 5  # below its uniform share
    assert doc["known_answer"]["noise"] == "noise"
    for name in ("config.toml", "metrics.jsonl", "mixture.png", "checkpoint.npz"):
        assert (run / name).exists(), name
    out = capsys.readouterr().out
    assert "[ok] noise" in out and "expected" in out


@needs_backend
def test_train_compare_plot_from_a_learned_mixture(tmp_path, capsys):
    learned = tmp_path / "learned"
    assert main(["optimize", *_args(learned, steps=40)]) == 0
    assert main(["train", "--mixture", str(learned), *_args(tmp_path / "train", steps=30)]) == 0
    out = capsys.readouterr().out
    assert "validation loss per domain" in out and "target" in out
    trained = _mixture(tmp_path / "train")
    for d, w in _mixture(learned)["average"].items():
        assert trained["average"][d] == pytest.approx(w, rel=1e-5)  # trained WITH the fixed mixture
    assert (
        main(
            [
                "compare",
                "--mixture",
                str(learned / "mixture.json"),
                *_args(tmp_path / "cmp", steps=30),
            ]
        )
        == 0
    )
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(table) >= {"learned", "uniform"} and (tmp_path / "cmp" / "compare.png").exists()
    (learned / "mixture.png").unlink()
    assert main(["plot", str(learned)]) == 0 and (learned / "mixture.png").exists()


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lrate=1"], "unknown training key"),
        (["train.lr=-1.0"], "lr must be > 0"),
        (["train.probe_steps=0"], "probe_steps must be > 0"),
        (['train.steps="many"'], "steps must be int"),
        (["data.seq_len=1"], "data.seq_len must be >= 2"),
        (['model.kind="rnn"'], "model.kind='rnn'"),
        (['run.backend="mxnet"'], "run.backend='mxnet'"),
        (["nonsense.key=1"], "unknown table"),
        (["train.accumulate=3"], "must be a multiple of accumulate=3"),
    ],
)
def test_bad_config_fails_before_work_naming_the_key(tmp_path, capsys, sets, message):
    args = [item for s in sets for item in ("--set", s)]
    assert main(["optimize", *args, "--set", f'run.run_dir="{tmp_path}/r"', "-q"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was started


@needs_backend
def test_missing_data_and_existing_run_dir(tmp_path, capsys):
    assert (
        main(
            [
                "optimize",
                "--set",
                f'data.path="{tmp_path}/nope"',
                "--set",
                f'run.run_dir="{tmp_path}/r"',
                "--set",
                f"run.backend={BACKENDS[0]}",
            ]
        )
        == 1
    )
    assert "nope" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["optimize", *_args(run, steps=20)]) == 0
    assert main(["optimize", *_args(run, steps=20)]) == 1
    assert "--resume" in capsys.readouterr().err and _mixture(run)["steps"] == 20


@needs_backend
def test_mixture_with_other_domains_is_rejected(tmp_path, capsys):
    bad = tmp_path / "mixture.json"
    run = tmp_path / "learned"
    assert main(["optimize", *_args(run, steps=20)]) == 0
    doc = _mixture(run)
    doc["average"] = {"web": 0.5, "code": 0.5}
    bad.write_text(json.dumps(doc))
    assert main(["train", "--mixture", str(bad), *_args(tmp_path / "t", steps=10)]) == 2
    assert "do not match the data" in capsys.readouterr().err


def _subprocess(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tandem_adapters.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture
def cache_env(request):
    """Subprocesses share the test session's JAX compilation cache (compile once, not 3 times)."""
    cache = request.config.cache.mkdir("jax-compilation")
    return {
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGKILL, -9, marks=pytest.mark.slow)]
)
def test_interrupted_run_resumes_bitwise(tmp_path, backend, sig, code, cache_env):
    steps = 200
    extra = [
        "run.checkpoint_every=7",
        "train.probe_steps=3",
        "train.free_steps=4",
    ]  # mid-episode saves
    # every part runs in a fresh process: the test process itself runs JAX with x64 enabled
    whole = tmp_path / "whole"
    _finish(
        _subprocess(["optimize", *_args(whole, *extra, backend=backend, steps=steps)], cache_env)
    )
    cut = tmp_path / "cut"
    proc = _subprocess(["optimize", *_args(cut, *extra, backend=backend, steps=steps)], cache_env)
    wait_for_rows(cut / "metrics.jsonl", 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    if sig == signal.SIGTERM:
        assert "continue with --resume" in err
    _finish(
        _subprocess(["optimize", *_args(cut, *extra, backend=backend, steps=steps), "--resume"])
    )
    a, b = _mixture(whole), _mixture(cut)
    assert a["trajectory"] == b["trajectory"] and a["average"] == b["average"]
    assert _metrics(whole) == _metrics(cut)


@needs_backend
def test_truncated_checkpoint_is_reported_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["optimize", *_args(run, steps=20)]) == 0
    data = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(data[: len(data) // 3])
    assert main(["optimize", *_args(run, steps=40), "--resume"]) == 1
    assert "truncated or corrupted" in capsys.readouterr().err


@needs_backend
def test_resume_with_another_config_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["optimize", *_args(run, steps=20)]) == 0
    assert main(["optimize", *_args(run, "train.lr=0.01", steps=20), "--resume"]) == 2
    assert "different configuration" in capsys.readouterr().err


@needs_backend
def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    import tandem_core.state as state_mod

    run = tmp_path / "run"
    real, calls = state_mod.np.savez, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(state_mod.np, "savez", flaky)
    assert main(["optimize", *_args(run, "run.checkpoint_every=10", steps=60)]) == 1
    assert "No space left" in capsys.readouterr().err  # one line, no traceback
    monkeypatch.undo()
    import tandem_core as tc

    meta = tc.read_metadata(run / "checkpoint.npz")  # the second checkpoint, intact
    assert meta["step"] == 20
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp files left
    assert main(["optimize", *_args(run, "run.checkpoint_every=10", steps=60), "--resume"]) == 0
    assert _mixture(run)["steps"] == 60


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["backend.fsdp=true", "run.checkpoint_every=10"]])
def test_nproc_two_matches_one_process(tmp_path, extra):
    pytest.importorskip("torch")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["optimize", *_args(one, backend="torch", steps=30)]) == 0
    assert main(["optimize", *_args(two, *extra, backend="torch", steps=30), "--nproc", "2"]) == 0
    np.testing.assert_allclose(
        np.array(_mixture(one)["trajectory"]), np.array(_mixture(two)["trajectory"]), atol=1e-5
    )


@needs_backend
def test_seeds_report_mean_and_spread(tmp_path, capsys, monkeypatch):
    import tandem_adapters.jobs as jobs

    reads = []
    make_suite = jobs.make_suite
    monkeypatch.setattr(jobs, "make_suite", lambda *a, **k: reads.append(a) or make_suite(*a, **k))
    run = tmp_path / "run"
    assert main(["optimize", *_args(run, steps=20), "--seeds", "2"]) == 0
    assert len(reads) == 1  # the data is read once for every seed
    out = capsys.readouterr().out
    assert "± std" in out and "mean over 2 seeds" in out
    doc = _mixture(run)
    seeds = [_mixture(run / f"seed-{k}") for k in range(2)]
    assert doc["seeds"]["train_seeds"] == [0, 1] and doc["seeds"]["model_seeds"] == [0, 1]
    for d in doc["domains"]:
        values = [s["average"][d] for s in seeds]
        assert doc["average"][d] == pytest.approx(np.mean(values), abs=1e-12)
        assert doc["seeds"]["std_average"][d] == pytest.approx(np.std(values), abs=1e-12)
    assert seeds[0]["average"] != seeds[1]["average"]  # other init, other batch order
    assert main(["optimize", *_args(run, steps=20), "--seeds", "2"]) == 1  # a run is there
    assert "--resume" in capsys.readouterr().err
    # --resume reads finished seeds back: the summary is unchanged
    assert main(["optimize", *_args(run, steps=20), "--seeds", "2", "--resume"]) == 0
    assert _mixture(run)["average"] == doc["average"]
    assert main(["optimize", *_args(tmp_path / "x", steps=20), "--seeds", "0"]) == 2
