"""The test matrix. `nox` runs lint + tests for every backend; `nox -s slow dist examples bench`
the rest.

Sessions reuse their virtualenvs and install through uv when it is available. torch is pinned by
constraints.txt (its CPU wheel); where PIP_FIND_LINKS names a local wheel folder, uv is told so.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "tests"]

# backend -> (extras to install, namespaces the core tests run against, pytest marker expression)
MATRIX = {
    "numpy": ("dev", "numpy,array_api_strict", "not slow and not cross and not examples"),
    "torch": (
        "dev,torch,hf,data,tensorboard,wandb",
        "torch",
        "not slow and not cross and not examples",
    ),
    "jax": ("dev,jax", "jax", "not slow and not cross and not examples"),
    "cross": ("dev,torch,jax,hf", "numpy,torch,jax", "cross and not slow and not examples"),
}
ALL_EXTRAS = "dev,torch,jax,hf,data,tensorboard,wandb"


def install(session: nox.Session, extras: str) -> None:
    args = ["-c", "constraints.txt"]
    links = os.environ.get("PIP_FIND_LINKS")
    if links and session.venv_backend == "uv":
        args += ["--find-links", links]  # uv does not read PIP_FIND_LINKS
    session.install(*args, "-e", f".[{extras}]")
    if "torch" in extras.split(","):
        # Megatron-LM's own IndexedDatasetBuilder writes the files our .bin/.idx reader is
        # tested against; --no-deps: it needs only numpy, packaging and torch (installed)
        session.install(*args, "--no-deps", "megatron-core")


def pytest_args(session: nox.Session, marker: str) -> list[str]:
    return ["pytest", "-m", marker, *(session.posargs or ["-n", "2", "-q"])]


@nox.session
@nox.parametrize("backend", list(MATRIX))
def tests(session: nox.Session, backend: str) -> None:
    """Core tests against one array namespace, plus that backend's own tests ("cross": both)."""
    extras, namespaces, marker = MATRIX[backend]
    install(session, extras)
    env = {"TANDEM_TEST_BACKENDS": namespaces, "XLA_FLAGS": "", "OMP_NUM_THREADS": "1"}
    session.run(*pytest_args(session, marker), env=env)


@nox.session
def slow(session: nox.Session) -> None:
    """torch.compile and long end-to-end tests."""
    install(session, ALL_EXTRAS)
    env = {"TANDEM_TEST_BACKENDS": "numpy,torch,jax", "OMP_NUM_THREADS": "1"}
    session.run(*pytest_args(session, "slow"), env=env)


@nox.session
def dist(session: nox.Session) -> None:
    """Data-parallel tests: 2 torch processes on gloo (127.0.0.1), JAX on 4 CPU devices and 2 JAX
    processes (multi-node on 127.0.0.1: torchrun with 2 nodes, jax.distributed with 2 processes)."""
    install(session, ALL_EXTRAS)
    env = {"TANDEM_TEST_BACKENDS": "numpy,torch,jax", "OMP_NUM_THREADS": "1"}
    session.run("pytest", "-m", "dist", *(session.posargs or ["-q"]), env=env)


@nox.session
def examples(session: nox.Session) -> None:
    """The examples run as written; the twin loops learn the mixture of `tandem optimize`."""
    install(session, ALL_EXTRAS)
    env = {"TANDEM_TEST_BACKENDS": "numpy,torch,jax", "OMP_NUM_THREADS": "1"}
    session.run(*pytest_args(session, "examples"), env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark scripts on CPU (speed, quality, data, text cache, checkpoints): RESULTS.md."""
    install(session, "dev,torch,jax,data")
    env = {
        "OMP_NUM_THREADS": "1",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "BENCH_VIA": "nox -s bench",
    }
    session.run("python", "benchmarks/speed.py", "--write", env=env)
    session.run("python", "benchmarks/quality.py", "--write", env=env)
    session.run("python", "benchmarks/adapt_quality.py", "--write", env=env)
    session.run("python", "benchmarks/taskpgm_quality.py", "--write", env=env)
    session.run("python", "benchmarks/data.py", "--write", env=env)  # needs 9 GB free disk
    session.run("python", "benchmarks/text_cache.py", "--write", env=env)
    session.run("python", "benchmarks/checkpoint.py", "--write", env=env)  # 2 ranks, ~4 GB RAM


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
