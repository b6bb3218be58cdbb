"""Reproducible runs: the same seed and config give the same mixture, whatever the thread count.

On real text (Python's own standard library: every machine has it) a vocabulary of 257 byte
tokens and 7 domains make the CPU kernels split their work over threads; multi-threaded torch
index-add and embedding-backward kernels add in a varying order, which moved the learned mixture
by 1e-4 between two identical runs until ``backend.deterministic`` (default on).
"""

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from utils import installed_backends

BACKENDS = installed_backends()
DOMAINS = ("asyncio", "email", "json", "unittest", "xml", "http", "logging")
STEPS = 50  # two episodes of 5 probe + 20 free steps


def real_text(root: Path, per_domain: int = 120_000) -> Path:
    """A folder of 7 domains of real text: the sources of stdlib packages, ``per_domain`` bytes."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in DOMAINS:
        text = "".join(p.read_text(errors="replace") for p in sorted((lib / name).rglob("*.py")))
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{name}.txt").write_text(text[:per_domain])
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return real_text(tmp_path_factory.mktemp("realtext"))


def _env(backend: str, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if backend == "jax":
        multi = "true" if threads > 1 else "false"
        flags = f"--xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={threads}"
        env["XLA_FLAGS"] = flags
    return env


def _start(corpus, run_dir, backend, threads, *extra):
    sets = [
        f"run.backend={backend}",
        f'run.run_dir="{run_dir}"',
        f'data.path="{corpus}"',
        "data.val_fraction=0.1",
        f"train.steps={STEPS}",
        "run.checkpoint_every=20",
    ]
    if backend == "torch":
        sets.append(f"backend.threads={threads}")
    cmd = [sys.executable, "-m", "tandem_adapters.cli", "optimize", "-q", *extra]
    cmd += [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(
        cmd, env=_env(backend, threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(corpus, run_dir, backend, threads, *extra):
    proc = _start(corpus, run_dir, backend, threads, *extra)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads((Path(run_dir) / "mixture.json").read_text())


def _same(a: dict, b: dict) -> None:
    for key in ("average", "last", "trajectory"):
        assert a[key] == b[key], key


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_runs_give_the_same_mixture(corpus, tmp_path, backend, threads):
    first = _run(corpus, tmp_path / "a", backend, threads)
    second = _run(corpus, tmp_path / "b", backend, threads)
    _same(first, second)
    assert not np.allclose(list(first["average"].values()), 1 / len(DOMAINS))  # it learned


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_sigterm_equals_the_whole_run_with_two_threads(corpus, tmp_path, backend):
    whole = _run(corpus, tmp_path / "whole", backend, 2)
    proc = _start(corpus, tmp_path / "cut", backend, 2)
    checkpoint = tmp_path / "cut" / "checkpoint.npz"
    while not checkpoint.exists():  # the first periodic checkpoint: stop mid-run after it
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143 and "continue with --resume" in err
    _same(_run(corpus, tmp_path / "cut", backend, 2, "--resume"), whole)
