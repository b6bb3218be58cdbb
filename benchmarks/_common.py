"""Shared by benchmarks/speed.py and benchmarks/quality.py: environment, timing, RESULTS.md.

Call ``setup_env()`` before torch or jax is imported: one CPU thread for torch, OpenMP and XLA
(unless the caller set them), and fresh compilation caches, so compile times are cold.
"""

from __future__ import annotations

import atexit
import datetime
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def setup_env(threads: int = 1) -> None:
    """Thread counts and fresh JAX / inductor caches (before torch or jax is imported)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if threads == 1:
        os.environ.setdefault("XLA_FLAGS", ONE_THREAD_XLA)
    cache = tempfile.mkdtemp(prefix="tandem-bench-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    # cold compiles in this process; child processes (memory probes, workers) share the cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache, "inductor"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(cache, "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


class Report:
    """Prints lines and keeps them, for RESULTS.md."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.goals: list[tuple[str, bool, str]] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.extend(str(text).splitlines() or [""])

    def goal(self, name: str, ok: bool, detail: str) -> None:
        """Print and keep a goal verdict."""
        self.goals.append((name, ok, detail))
        self(f"  [{'met' if ok else 'NOT met'}] {name}: {detail}")

    def text(self) -> str:
        return "\n".join(self.lines)


def timed(fn: Callable[[], object], *, repeat: int = 5, number: int = 1) -> list[float]:
    """Seconds per call of ``fn`` (which must block until its work is done), ``repeat`` times."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - start) / number)
    return out


def med(values: list[float]) -> float:
    return statistics.median(values)


def header(title: str) -> list[str]:
    """Command, date, commit and machine lines for a results section."""
    from tandem_adapters.bench import machine_info

    argv = " ".join(shlex.quote(a) for a in sys.argv)
    via = f" (run by `{os.environ['BENCH_VIA']}`)" if os.environ.get("BENCH_VIA") else ""
    lines = [
        f"command: `python {argv}`{via}",
        f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"commit: {_git_commit()}",
    ]
    info = machine_info()
    lines.append("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    return [f"### {title}", "", *lines]


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
        )
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=HERE,
        )
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def finish(report: Report, name: str, title: str, start: float, *, write: bool) -> None:
    """Print the wall time; with ``write``, put the output in RESULTS.md's ``name`` block."""
    elapsed = time.perf_counter() - start
    report(f"\n{name}.py finished in {elapsed / 60:.1f} min")
    if write:
        write_section(name, header(title), report.text(), elapsed=elapsed)


def write_section(name: str, head: list[str], body: str, *, elapsed: float) -> None:
    """Replace the ``name`` block of RESULTS.md (between its markers) with this run's output."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join(
        [begin, *head, f"wall time: {elapsed / 60:.1f} min", "", "```text", body, "```", end]
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    from tandem_core.state import atomic_write

    atomic_write(RESULTS, text)
