"""Backend comparison: the same TANDEM task on JAX (jit), torch eager and ``torch.compile``.

Used by ``tandem bench`` and ``benchmarks/speed.py``. An engine is a backend with options (the
``[backend]`` table); every engine gets the same job configuration (model, data, seed, batch
sizes; ``sampling="reweight"``: fixed per-domain sub-batches, so the compute does not depend on
the mixture values), runs whole episodes through ``tandem_core.run.MixtureRun`` (host sampling,
the loop, device steps), and is timed in interleaved
rounds. Compile time (the first two episodes minus two steady ones) is reported apart from the
steady state. Peak memory is measured in a fresh process per engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import tandem_core as tc
from tandem_core.backend import training_backend
from tandem_core.run import MixtureRun

from .config import JobConfig

__all__ = [
    "ENGINES",
    "block",
    "build",
    "compare_backends",
    "peak_rss_during",
    "format_table",
    "machine_info",
    "peak_memory",
    "rss_mib",
    "time_blocks",
]

# engine name -> (backend, [backend] option overrides)
ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "jax": ("jax", {}),
    "torch": ("torch", {}),
    "torch-compile": ("torch", {"compile": True}),
    "jax-fused": ("jax", {"fuse_twins": True}),
    "torch-fused": ("torch", {"fuse_twins": True}),
}
NO_LOGGING = 10**9  # log_every inside timed loops: no logging step, hence no host read


def engine_config(cfg: JobConfig, engine: str) -> JobConfig:
    """``cfg`` for one engine: its backend and options, no progress bar, no logging steps."""
    if engine not in ENGINES:
        raise tc.ConfigError(f"unknown engine {engine!r}; choose from {sorted(ENGINES)}")
    backend, overrides = ENGINES[engine]
    train = {"log_every": NO_LOGGING, "eval_every": 0, "steps": NO_LOGGING}
    cfg = cfg.replace(run={"backend": backend, "progress": False}, train=train)
    return cfg.replace(backend=overrides) if overrides else cfg


def build(cfg: JobConfig, engine: str, corpus: Any = None) -> MixtureRun:
    """A ``MixtureRun`` of ``cfg`` on ``engine`` (one of ``ENGINES``)."""
    from .jobs import build_run, load_corpus

    cfg = engine_config(cfg, engine)
    return build_run(cfg, corpus if corpus is not None else load_corpus(cfg.data))


def block(run: MixtureRun, backend: str) -> None:
    """Wait until the device has finished every queued step of ``run`` (no-op on eager CPU)."""
    training_backend(backend).block((run.state, run.engine.twins))


def time_blocks(run: MixtureRun, blocks: int, backend: str) -> tuple[float, int]:
    """Seconds and proxy steps of ``blocks`` schedule periods (whole TANDEM episodes)."""
    ticks = blocks * run.schedule.length
    before = run.proxy_step
    block(run, backend)
    start = time.perf_counter()
    for _ in range(ticks):
        run.step()
    block(run, backend)
    return time.perf_counter() - start, run.proxy_step - before


def tokens_per_step(cfg: JobConfig, num_domains: int) -> int:
    """Training tokens one proxy step consumes (rows x sequence length)."""
    return cfg.train.batch_per_domain * num_domains * cfg.data.seq_len


def compare_backends(
    cfg: JobConfig,
    engines: list[str],
    *,
    episodes: int = 2,
    rounds: int = 3,
    echo: Any = None,
    memory: bool = False,
) -> tuple[list[dict], dict[str, MixtureRun]]:
    """Time ``engines`` on the task ``cfg`` in interleaved rounds.

    Args:
        cfg: the job (model, data, train tables); the engine sets the backend.
        engines: names from ``ENGINES``.
        episodes: episodes per engine per round.
        rounds: interleaved rounds (the order rotates each round).
        echo: optional ``print``-like progress callback.
        memory: also measure each engine's peak memory (``peak_memory``, a fresh process each).

    Returns:
        One row per engine (seconds per episode min / median, steps/s, tokens/s, compile
        seconds, max |alpha - alpha of the first engine|, with ``memory`` the ``peak_memory``
        fields), and the warm runs by engine name.
    """
    from .jobs import load_corpus

    corpus = load_corpus(cfg.data)
    runs, compile_s, times = {}, {}, {e: [] for e in engines}
    for name in engines:
        start = time.perf_counter()
        runs[name] = build(cfg, name, corpus)
        setup = time.perf_counter() - start
        backend = ENGINES[name][0]
        first, _ = time_blocks(runs[name], 2, backend)  # compiles (JAX recompiles in episode 2)
        steady, _ = time_blocks(runs[name], 1, backend)
        compile_s[name] = max(setup + first - 2 * steady, 0.0)
        if echo:
            echo(f"  {name}: built and warmed up in {setup + first + steady:.1f} s")
    steps = 0
    for r in range(rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for name in order:
            seconds, steps = time_blocks(runs[name], episodes, ENGINES[name][0])
            times[name].append(seconds / episodes)
    steps_per_episode = steps // episodes
    tokens = tokens_per_step(cfg, len(corpus.domains))
    reference = _host(runs[engines[0]].state.alpha)
    rows = []
    for name in engines:
        med = statistics.median(times[name])
        rows.append(
            {
                "engine": name,
                "episode_s_min": min(times[name]),
                "episode_s_median": med,
                "steps_per_s": steps_per_episode / med,
                "tokens_per_s": steps_per_episode * tokens / med,
                "compile_s": compile_s[name],
                "alpha_diff": float(np.abs(_host(runs[name].state.alpha) - reference).max()),
            }
        )
    fastest = max(r["steps_per_s"] for r in rows)
    for row in rows:
        row["ratio_to_fastest"] = row["steps_per_s"] / fastest
        if memory:
            row.update(peak_memory(cfg, row["engine"]))
    return rows, runs


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def rss_mib() -> tuple[float, float]:
    """Current and peak resident memory of this process, MiB (``VmRSS``, ``VmHWM``)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def peak_rss_during(fn: Callable[[], Any], *, every: float = 0.001) -> float:
    """Peak resident memory of this process above its level before ``fn()``, MiB (Linux).

    Sampled every ``every`` seconds by a thread, after freeing the heap's unused pages (they
    would hide new allocations).
    """
    import ctypes
    import gc
    import threading

    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    base, peak, stop = rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(every)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return (max(peak[0], rss()) - base) / 2**20


def peak_memory(cfg: JobConfig, engine: str, *, timeout: float = 600) -> dict:
    """Peak memory of ``engine`` on ``cfg`` over two episodes, measured in a fresh process.

    Returns:
        ``{"rss_mib": peak RSS minus RSS after imports, data and model (CPU; includes the twins,
        optimizer states, activations and the JIT compiler's own memory), "device_mib": peak
        device allocation (GPU only, else None)}``.
    """
    payload = json.dumps({"cfg": cfg.to_mapping(), "engine": engine})
    cmd = [sys.executable, "-m", "tandem_adapters.bench", payload]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe of {engine} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_probe(payload: str) -> dict:
    spec = json.loads(payload)
    cfg = engine_config(JobConfig.from_mapping(spec["cfg"]), spec["engine"])
    from .jobs import build_run, load_corpus

    backend = training_backend(cfg.run.backend)
    corpus = load_corpus(cfg.data)
    backend.build_model(cfg.model, vocab_size=corpus.vocab_size, seq_len=2)
    baseline, _ = rss_mib()  # libraries loaded and initialised, data in memory
    run = build_run(cfg, corpus)
    time_blocks(run, 2, cfg.run.backend)
    _, peak = rss_mib()
    return {"rss_mib": peak - baseline, "device_mib": backend.peak_memory_mib()}


def machine_info(backends: list[str] = ()) -> dict[str, str]:
    """CPU model, cores, library versions, threads and accelerator of ``backends``."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}
    info["numpy"] = np.__version__
    accelerators = []
    for name in backends:
        facts = dict(training_backend(name).info())
        accelerators.append(facts.pop("accelerator", ""))
        info.update(facts)
    info["accelerator"] = ", ".join(a for a in accelerators if a) or "none (CPU only)"
    for var in ("OMP_NUM_THREADS", "XLA_FLAGS"):
        info[var] = os.environ.get(var, "(unset)")
    return info


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are ``(key, header, format)``, e.g. ``("x", "x", ".3f")``."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([_cell(row.get(k), fmt) for k, _, fmt in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for r in cells:
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(padded).rstrip())
    lines.insert(1, "-" * max(len(ln) for ln in lines))
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) or not fmt:
        return str(value)
    return format(value, fmt)


BACKEND_COLUMNS = [
    ("engine", "engine", ""),
    ("steps_per_s", "steps/s", ".1f"),
    ("tokens_per_s", "tokens/s", ",.0f"),
    ("episode_s_min", "episode s (min)", ".3f"),
    ("episode_s_median", "episode s (median)", ".3f"),
    ("ratio_to_fastest", "speed / fastest", ".2f"),
    ("compile_s", "warm-up s", ".1f"),
    ("rss_mib", "peak RSS +MiB", ".0f"),
    ("device_mib", "device peak MiB", ".0f"),
]


if __name__ == "__main__":  # the memory probe of ``peak_memory``: one engine, fresh process
    print(json.dumps(_memory_probe(sys.argv[1])))
