"""Speed of the backends and of the mixture machinery; every figure is measured in this run.

Sections: (1) backend table, JAX jit vs torch eager vs torch.compile on one task; (2) machinery
overhead, accounting + mixture update vs one probe step; (3) episode cost vs the analytic cost
(docs/methods.md, TANDEM cost); (4) twin fusion (vmap) vs sequential twins; (5) accounting +
update vs the number of domains M and the batch size, and training throughput vs the batch size;
(6) host syncs per step; (7) the cost of deterministic kernels.

Timings are ratios of measurements interleaved in this process (the machine may be shared);
absolute times are printed for context only. Usage:

    python benchmarks/speed.py [--write] [--quick] [--set model.d_model=32 ...]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from typing import Any

import _common
import numpy as np
from _common import Report, med, timed

ENGINE_ORDER = ["jax", "torch", "torch-compile"]


# ----------------------------------------------------------------------------- helpers
def sync_fn(run: Any) -> Any:
    """A function that waits for the device of ``run``'s engine."""
    from tandem_adapters.bench import block

    backend = backend_of(run)
    return lambda: block(run, backend)


def backend_of(run: Any) -> str:
    """The backend name of ``run``'s engine (the benchmark builds torch and JAX engines only)."""
    return "jax" if type(run.engine).__module__.startswith("tandem_jax") else "torch"


def batches(run: Any, n: int = 3) -> dict[str, list]:
    """Pre-sampled host batches (train, val, eval) of ``run``'s shapes, from a separate sampler."""
    from tandem_adapters.data import TokenSampler

    s = TokenSampler(run.sampler.corpus, run.sampler.seq_len, seed=12345)
    cfg = run.config
    return {
        "train": [s.train_batch(cfg.batch_per_domain) for _ in range(n)],
        "val": [s.val_batch(cfg.val_batch_size) for _ in range(n)],
        "eval": [s.eval_batch(cfg.eval_per_domain) for _ in range(n)],
    }


def component_times(run: Any, data: dict, repeat: int) -> dict[str, float]:
    """Median seconds of one probe step, free step (train batch), reference step on the val batch
    alone, one forward of one model on the evaluation batch, and one whole episode of the run
    (``run`` must stand at an episode boundary), measured in interleaved rounds."""
    eng, state, gamma = run.engine, run.state, run.plan.gamma
    alpha = state.alpha
    i = collections.Counter()

    def cycle(kind: str) -> dict:
        i[kind] += 1
        return data[kind][i[kind] % len(data[kind])]

    calls = {
        "probe": lambda: eng.probe(cycle("train"), cycle("val"), alpha, gamma=gamma),
        "free": lambda: eng.step(cycle("train"), state),
        "val_step": lambda: eng.step(cycle("val"), state, model="reference"),
        "eval_forward": lambda: eng.evaluate([cycle("eval")]),
    }
    calls = {k: _blocking(fn, run) for k, fn in calls.items()}
    for call in calls.values():  # compile / warm up every shape first
        call(), call()
    calls["episode"] = _blocking(lambda: [run.step() for _ in range(run.schedule.length)], run)
    out = {k: [] for k in calls}
    for _ in range(repeat):  # interleaved, whole episodes included
        for k, call in calls.items():
            out[k] += timed(call, repeat=1, number=1 if k == "episode" else 3)
    return {k: med(v) for k, v in out.items()}


def machinery_fn(backend: str, num_domains: int, batch: int, transform: Any) -> Any:
    """One call = what the loop spends on the mixture machinery for one step, as it runs it:
    per-domain sums and counts of both twins on a (B,) batch (inside the jitted step on JAX),
    the driver's merge into the running statistics (eager), and one TANDEM mixture update
    (jitted on JAX, eager on torch). Blocks until done."""
    import tandem_core as tc

    rng = np.random.default_rng(0)
    losses = rng.random((2, batch)).astype(np.float32) + 1
    ids = rng.integers(0, num_domains, batch).astype(np.int32)
    wait: Any = lambda tree: None  # noqa: E731
    if backend == "numpy":
        xp, seg, losses_d, ids_d = np, None, losses, ids
    elif backend == "torch":
        import torch

        from tandem_torch import segment_sum as seg

        xp, losses_d, ids_d = torch, torch.as_tensor(losses), torch.as_tensor(ids)
    else:
        import jax
        import jax.numpy as xp

        from tandem_jax import segment_sum as seg

        losses_d, ids_d, wait = xp.asarray(losses), xp.asarray(ids), jax.block_until_ready

    def accounting(lo: Any, ids: Any) -> Any:
        stats = [tc.domain_stats(x, ids, num_domains, checked=False, segment_sum=seg) for x in lo]
        return tc.TwinStats(*stats)

    update = transform.update
    if backend == "jax":
        accounting, update = jax.jit(accounting), jax.jit(update)
    box = {"state": transform.init(num_domains, xp=xp, dtype=xp.float32)}
    box["acc"] = accounting(losses_d, ids_d).proxy

    def call() -> None:
        twin = accounting(losses_d, ids_d)
        box["acc"] = tc.merge_stats(box["acc"], twin.proxy)
        box["state"] = update(box["state"], twin)
        wait((box["state"], box["acc"]))

    return call


def _blocking(fn: Any, run: Any) -> Any:
    wait = sync_fn(run)

    def call() -> None:
        fn()
        wait()

    return call


# ----------------------------------------------------------------------------- sections
def backend_table(report: Report, cfg: Any, engines: list[str], args: Any) -> tuple:
    from tandem_adapters.bench import BACKEND_COLUMNS, compare_backends, format_table

    report("## 1. Backend table (same task, same seed, interleaved rounds)")
    rows, runs = compare_backends(
        cfg,
        engines,
        episodes=args.episodes,
        rounds=args.rounds,
        echo=report,
        memory=not args.no_memory,
    )
    report(format_table(rows, BACKEND_COLUMNS))
    worst = max(r["alpha_diff"] for r in rows)
    report(
        f"steps/s = proxy optimizer steps per second over whole episodes (K="
        f"{cfg.train.params.probe_steps} probe + E={cfg.train.params.free_steps} free steps, sync "
        "and mixture update included); median "
        f"of {args.rounds} interleaved rounds of {args.episodes} episodes. warm-up s = build + "
        "first two episodes minus two steady ones (JAX: tracing + XLA compiles; torch.compile: "
        "dynamo + inductor; eager: first calls). peak RSS +MiB: fresh process, peak minus RSS "
        "after imports + data + model (CPU; includes compiler memory). Same trajectory: max "
        f"|alpha - alpha_{engines[0]}| after the same episodes = {worst:.1e}."
    )
    return rows, runs


def overhead_and_episode(report: Report, runs: dict, repeat: int) -> dict:
    from tandem_adapters.bench import format_table

    report("\n## 2-3. Machinery overhead and episode cost vs the analytic cost (docs/methods.md)")
    rows, comps = [], {}
    for name in [n for n in ("torch", "jax") if n in runs]:
        run = runs[name]
        comps[name] = c = component_times(run, batches(run), repeat)
        backend = backend_of(run)
        m = len(run.domains)
        b = run.config.batch_per_domain * m
        mach = machinery_fn(backend, m, b, run.transform)  # the run's own transform
        for _ in range(3):
            mach()
        t_mach = med(timed(mach, repeat=7, number=20))
        k, e = run.schedule.probe_steps, run.schedule.free
        predicted = (k + e) * c["free"] + k * (c["free"] + c["val_step"]) + 2 * c["eval_forward"]
        measured = c["episode"]
        rows.append(
            {
                "engine": name,
                "probe_ms": 1e3 * c["probe"],
                "free_ms": 1e3 * c["free"],
                "val_ms": 1e3 * c["val_step"],
                "eval_ms": 1e3 * c["eval_forward"],
                "mach_us": 1e6 * t_mach,
                "overhead": t_mach / c["probe"],
                "predicted_s": predicted,
                "measured_s": measured,
                "ratio": measured / predicted,
            }
        )
    report(
        format_table(
            rows,
            [
                ("engine", "engine", ""),
                ("probe_ms", "probe ms", ".2f"),
                ("free_ms", "free ms", ".2f"),
                ("val_ms", "val step ms", ".2f"),
                ("eval_ms", "eval fwd ms", ".2f"),
                ("mach_us", "acct+update us", ".0f"),
                ("overhead", "(acct+update)/probe", ".2%"),
                ("predicted_s", "episode predicted s", ".3f"),
                ("measured_s", "episode measured s", ".3f"),
                ("ratio", "measured/predicted", ".3f"),
            ],
        )
    )
    report(
        "acct+update = per-domain sums and counts of both twins on one train batch, merge into "
        "the running statistics, and one TANDEM mixture update (torch eager; JAX jitted), median."
        " predicted = (K+E) free + K (free + val step) + 2 eval forwards (docs/methods.md), from "
        "the "
        "component medians; measured = median whole episode through MixtureRun (host sampling, "
        "driver, sync and update included), timed in the same interleaved rounds."
    )
    for r in rows:
        report.goal(
            f"machinery overhead <= 1% of a probe step ({r['engine']})",
            r["overhead"] <= 0.01,
            f"{r['overhead']:.2%} ({r['mach_us']:.0f} us vs {r['probe_ms']:.2f} ms)",
        )
    for r in rows:
        report.goal(
            f"episode cost <= 1.05 x analytic ({r['engine']})",
            r["ratio"] <= 1.05,
            f"{r['ratio']:.3f}",
        )
    return comps


def fusion_times(plain: Any, fused: Any, data: dict, repeat: int) -> dict[str, float]:
    """Median seconds of a single proxy step, a sequential probe step and a fused probe step."""
    train, val = data["train"][0], data["val"][0]
    fns = {
        "single": (plain, lambda: plain.engine.step(train, plain.state)),
        "sequential": (plain, lambda: plain.engine.probe(train, val, plain.state.alpha, gamma=1.0)),
        "fused": (fused, lambda: fused.engine.probe(train, val, fused.state.alpha, gamma=1.0)),
    }
    calls = {k: _blocking(fn, run) for k, (run, fn) in fns.items()}
    for call in calls.values():
        call(), call()
    times: dict[str, list] = {k: [] for k in calls}
    for _ in range(repeat):  # interleaved
        for k, call in calls.items():
            times[k] += timed(call, repeat=1, number=3)
    return {k: med(v) for k, v in times.items()}


def twin_fusion(report: Report, cfg: Any, runs: dict, comps: dict, repeat: int) -> None:
    from tandem_adapters.bench import build, format_table

    report("\n## 4. Twin fusion: one vmap probe step vs two sequential twins (CPU)")
    rows = []
    for name in [n for n in ("torch", "jax") if n in runs]:
        fused = build(cfg, f"{name}-fused", runs[name].sampler.corpus)
        plain = runs[name]
        data = batches(plain)
        t = fusion_times(plain, fused, data, repeat)
        c = comps.get(name, {})
        work = 2 + c["val_step"] / c["free"] if c else float("nan")
        rows.append(
            {
                "engine": name,
                "single_ms": 1e3 * t["single"],
                "seq_ms": 1e3 * t["sequential"],
                "fused_ms": 1e3 * t["fused"],
                "seq_ratio": t["sequential"] / t["single"],
                "fused_ratio": t["fused"] / t["single"],
                "speedup": t["sequential"] / t["fused"],
                "work": work,
                "efficiency": t["fused"] / t["single"] / work,
            }
        )
    report(
        format_table(
            rows,
            [
                ("engine", "engine", ""),
                ("single_ms", "single step ms", ".2f"),
                ("seq_ms", "sequential probe ms", ".2f"),
                ("fused_ms", "fused probe ms", ".2f"),
                ("seq_ratio", "sequential / single", ".2f"),
                ("fused_ratio", "fused / single", ".2f"),
                ("speedup", "sequential / fused", ".2f"),
                ("work", "analytic work / single", ".2f"),
                ("efficiency", "fused / analytic", ".2f"),
            ],
        )
    )
    report(
        "single = one proxy step (free); a probe step trains both twins on the same train batch "
        "and the reference also on the val batch, so its analytic work is 2 + (val step / free "
        "step) single steps; fused / analytic < 1 means fusion saves time over the work done."
    )
    for r in rows:
        report.goal(
            f"fused probe step <= 2.0 x a single step ({r['engine']})",
            r["fused_ratio"] <= 2.0,
            f"{r['fused_ratio']:.2f} x",
        )


def scale_domains(report: Report, sizes: list[int], batch: int, backends: list[str]) -> None:
    from tandem_adapters.bench import format_table
    from tandem_core.methods import get_method

    report(f"\n## 5a. Accounting + mixture update vs the number of domains M (B = {batch}, CPU)")
    # the default update (its constant step size does not read M)
    transform = get_method("tandem").make_transform(num_domains=sizes[-1], steps=600)
    rows = []
    for m in sizes:
        row: dict[str, Any] = {"M": f"{m:,}"}
        for backend in backends:
            fn = machinery_fn(backend, m, batch, transform)
            fn(), fn()
            row[backend] = 1e3 * min(timed(fn, repeat=5, number=max(1, 2000 // m + 1)))
        rows.append(row)
    report(format_table(rows, [("M", "M", ""), *((b, f"{b} ms", ".3f") for b in backends)]))
    report(
        "minimum of 5 repetitions; both twins' segment sums, merge, one TANDEM update (rms, eg)."
    )
    big = rows[-1]
    for backend in backends:
        report.goal(
            f"accounting + update < 5 ms at M = {sizes[-1]:,} ({backend})",
            big[backend] < 5,
            f"{big[backend]:.3f} ms",
        )


def scale_batch(report: Report, cfg: Any, per_domain: list[int], backends: list[str]) -> None:
    from tandem_adapters.bench import build, format_table, tokens_per_step
    from tandem_core.methods import get_method

    report("\n## 5b. Batch size: accounting + update (M = 1,000) and proxy training throughput")
    transform = get_method("tandem").make_transform(num_domains=1000, steps=600)
    rows = []
    for b in (256, 4096, 65536):
        row: dict[str, Any] = {"B": f"{b:,}"}
        for backend in ["numpy", *backends]:
            fn = machinery_fn(backend, 1000, b, transform)
            fn(), fn()
            row[backend] = 1e3 * min(timed(fn, repeat=5, number=3))
        rows.append(row)
    cols = [("B", "samples B", ""), *((k, f"{k} ms", ".3f") for k in ["numpy", *backends])]
    report(format_table(rows, cols))
    rows = []
    for b in per_domain:
        sub = cfg.replace(train={"batch_per_domain": b})
        row = {"bpd": b}
        for backend in backends:
            run = build(sub, backend)
            data = batches(run, 2)
            train = data["train"][0]
            step = _blocking(lambda run=run, train=train: run.engine.step(train, run.state), run)
            step(), step(), step()
            t = med(timed(step, repeat=5, number=3))
            row[f"{backend}_tok"] = tokens_per_step(sub, len(run.domains)) / t
            row[f"{backend}_ms"] = 1e3 * t
        rows.append(row)
    cols = [("bpd", "rows/domain", "d")]
    for backend in backends:
        cols += [(f"{backend}_ms", f"{backend} step ms", ".2f")]
        cols += [(f"{backend}_tok", f"{backend} tokens/s", ",.0f")]
    report(format_table(rows, cols))
    report("one proxy training step (free) on the task's model; median of 5 x 3 steps.")


TANDEM = ("tandem_core", "tandem_torch", "tandem_jax", "tandem_adapters")
SHIMS = ("jax._src.array", "torch._tensor", "numpy", "array_api_compat")  # conversion layers


@contextlib.contextmanager
def count_host_reads():
    """Count device-to-host reads made by tandem code.

    A read counts when tandem code calls it directly (through conversion layers such as
    ``float(x)`` -> ``jax.Array.__float__``), as in tests/backend_kits.py; library internals are
    not counted (torch's AdamW reads its CPU-resident step counters with ``.item()``: no device
    sync).

    torch: ``Tensor.item/cpu/tolist/numpy/__bool__/__float__/__int__/__index__``; JAX: the
    ``ArrayImpl._value`` property behind float/int/bool/tolist/format, ``ArrayImpl.item``,
    ``jax.device_get``; both: ``np.asarray`` / ``np.array`` of a device array (JAX on CPU reads
    those through the buffer protocol, which ``jax.transfer_guard`` does not see).
    """
    counts: collections.Counter = collections.Counter()
    undo = []
    depth = [0]  # reads nested in a counted read (np.asarray -> Tensor.numpy) count once

    def tandem_caller() -> str | None:
        f = sys._getframe(3)  # tandem_caller <- note <- wrapper <- the caller
        while f is not None and f.f_globals.get("__name__", "").startswith(SHIMS):
            f = f.f_back  # float(x) -> jax's __float__ -> _value: the read is float's caller's
        mod = "" if f is None else f.f_globals.get("__name__", "")
        return mod if mod.startswith(TANDEM) else None

    def patch(owner: Any, name: str, label: str, test: Any = None) -> None:
        own = name in vars(owner)
        original = vars(owner)[name] if own else getattr(owner, name)
        fget = original.fget if isinstance(original, property) else original

        def note(args: tuple) -> None:
            if depth[0] == 0 and (test is None or (args and test(args[0]))):
                mod = tandem_caller()
                if mod is not None:
                    counts[f"{label} from {mod}"] += 1

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            note(args)
            depth[0] += 1
            try:
                return fget(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(owner, name, property(wrapper) if isinstance(original, property) else wrapper)
        undo.append((owner, name, original if own else None))

    device_types: list[type] = []
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        device_types.append(torch.Tensor)
        for n in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
            patch(torch.Tensor, n, f"Tensor.{n}")
        # .cpu() of a CPU tensor is a no-op; of a GPU tensor it is THE read (.numpy() follows)
        patch(torch.Tensor, "cpu", "Tensor.cpu", lambda t: t.device.type != "cpu")
    if "jax" in sys.modules:
        import jax
        from jax._src import array as jarr

        device_types.append(jax.Array)
        patch(jarr.ArrayImpl, "_value", "jax.Array read (float/int/bool/tolist)")
        patch(jarr.ArrayImpl, "item", "jax.Array.item")
        patch(jax, "device_get", "jax.device_get")
    on_device = tuple(device_types)
    for n in ("asarray", "array"):
        patch(np, n, f"np.{n}", lambda x: isinstance(x, on_device))
    try:
        yield counts
    finally:
        for owner, name, original in reversed(undo):
            if original is None:
                delattr(owner, name)  # inherited: uncover the base class's method again
            else:
                setattr(owner, name, original)


def host_syncs(report: Report, runs: dict) -> None:
    from tandem_adapters.bench import format_table

    report("\n## 6. Host syncs (device-to-host reads by tandem code)")
    rows = []
    for name, run in runs.items():
        ticks = 2 * run.schedule.length
        before = run.proxy_step
        with count_host_reads() as loop:
            for _ in range(ticks):
                run.step()
        steps = run.proxy_step - before
        with count_host_reads() as log:
            run.log()
        rows.append(
            {
                "engine": name,
                "steps": steps,
                "loop": sum(loop.values()),
                "per_step": sum(loop.values()) / steps,
                "log": sum(log.values()),
                "where": ", ".join(f"{k} x{v}" for k, v in loop.most_common(3)) or "-",
            }
        )
    report(
        format_table(
            rows,
            [
                ("engine", "engine", ""),
                ("steps", "proxy steps", "d"),
                ("loop", "reads in loop", "d"),
                ("per_step", "reads / step", ".2f"),
                ("log", "reads per logging step", "d"),
                ("where", "where (loop)", ""),
            ],
        )
    )
    report(
        "two whole episodes (sync, K probes, update, E free steps) without a logging step; a "
        "logging step reads the statistics on purpose (its count shows the counter is live)."
    )
    for r in rows:
        report.goal(
            f"0 host syncs per step in the loop ({r['engine']})", r["loop"] == 0, f"{r['loop']}"
        )


def determinism_cost(report: Report, cfg: Any, rounds: int) -> None:
    """Section 7: torch episodes with ``backend.deterministic`` on (the default) and off."""
    import json
    import subprocess

    from tandem_adapters.bench import format_table

    report("\n## 7. Deterministic kernels (backend.deterministic) vs not, torch")
    rows = []
    for threads in (1, 2):
        speed: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):  # alternating fresh processes: the setting is process-wide
            for det in (True, False):
                sub = cfg.replace(backend={"deterministic": det, "threads": threads})
                payload = json.dumps(sub.to_mapping())
                cmd = [sys.executable, __file__, "--episode-probe", payload]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
                speed[det].append(float(out.stdout.strip().splitlines()[-1]))
        on, off = med(speed[True]), med(speed[False])
        rows.append({"threads": threads, "on": on, "off": off, "ratio": on / off})
    cols = [("threads", "threads", "d"), ("on", "deterministic steps/s", ".1f")]
    cols += [("off", "not steps/s", ".1f"), ("ratio", "deterministic / not", ".3f")]
    report(format_table(rows, cols))
    report(
        f"median over {rounds} alternating fresh processes of 2 timed episodes each (after one "
        "warm-up episode); torch eager, the task above."
    )


def episode_probe(payload: str) -> float:
    """Steps/s of 2 episodes of the job ``payload`` (a JobConfig mapping), after a warm-up."""
    import json

    from tandem_adapters.bench import time_blocks
    from tandem_adapters.config import JobConfig
    from tandem_adapters.jobs import build_run, load_corpus

    cfg = JobConfig.from_mapping(json.loads(payload))
    run = build_run(cfg.replace(train={"log_every": 10**9}), load_corpus(cfg.data))
    time_blocks(run, 1, cfg.run.backend)
    seconds, steps = time_blocks(run, 2, cfg.run.backend)
    return steps / seconds


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--set", "-s", action="append", default=[], help="task override TABLE.KEY=V")
    p.add_argument("--engines", default=",".join(ENGINE_ORDER))
    p.add_argument("--episodes", type=int, default=2, help="episodes per engine per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds of micro-benchmarks")
    p.add_argument("--domains", default="10,1000,100000", help="M values of section 5a")
    p.add_argument("--batch-sizes", default="4,16,64", help="rows per domain of section 5b")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--episode-probe", help=argparse.SUPPRESS)  # section 7's child processes
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    args = parse(argv)
    if args.episode_probe:
        print(episode_probe(args.episode_probe))
        return Report()
    _common.setup_env()
    start = time.perf_counter()
    from tandem_adapters.config import JobConfig

    cfg = JobConfig.load(None, args.set)
    engines = [e for e in args.engines.split(",") if e]
    backends = [b for b in ("torch", "jax") if b in engines]
    report = Report()
    t = cfg.train
    report(
        f"task: suite {cfg.data.suite}, tiny GPT d={cfg.model.d_model} L={cfg.model.n_layer} "
        f"heads={cfg.model.n_head}, seq {cfg.data.seq_len}, {t.batch_per_domain} rows/domain, val "
        f"{t.val_batch_size} rows, eval {t.eval_per_domain}/domain, K={t.params.probe_steps} "
        f"E={t.params.free_steps}, {t.optimizer} lr {t.lr}, seed {cfg.data.seed}, {t.dtype}"
    )
    _, runs = backend_table(report, cfg, engines, args)
    comps = overhead_and_episode(report, runs, args.repeat)
    twin_fusion(report, cfg, runs, comps, args.repeat)
    scale_domains(report, [int(m) for m in args.domains.split(",")], 4096, ["numpy", *backends])
    scale_batch(report, cfg, [int(b) for b in args.batch_sizes.split(",")], backends)
    host_syncs(report, {k: v for k, v in runs.items() if k in ("torch", "jax")})
    if "torch" in backends:
        determinism_cost(report, cfg.replace(run={"backend": "torch"}), 3)
    _common.finish(report, "speed", "Speed", start, write=args.write)
    return report


if __name__ == "__main__":
    main()
