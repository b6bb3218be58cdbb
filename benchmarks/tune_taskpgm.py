"""TaskPGM's default unary utility: ``"gain"`` vs ``"group_gain"`` across suites, tuning seeds.

The evidence behind ``TaskPGMConfig.utility``'s default (docs/methods.md, "TaskPGM: Defaults"
and "Measured"). For each suite and seed, ``tandem taskpgm``'s Python API (``run_taskpgm``)
fine-tunes one model per task and runs the probe pass once; the mixture of each utility is then
solved from those same statistics, every other ``[taskpgm]`` setting at its library default (the
job's own solve, ``taskpgm_job._solve``). A fresh tiny GPT trains with each mixture, and with the
uniform and the size-proportional mixtures as references, exactly as in
``benchmarks/taskpgm_quality.py`` (its ``job_config``: same model, steps, batch). Reported: the
fresh model's target loss (the mean over the suite's validation streams), mean +- std over the
seeds, every seed, and who wins per seed.

Suites (``--suites``):

- ``tasks``: ``make_task_suite``, the suite of taskpgm_quality.py: six tasks (near-duplicates,
  a conflicting chain, noise), the target an equal mix of three chains given as three streams;
- ``sft``: the built-in ``sft`` suite (``data.suite = "sft"``, instruction tasks with a known
  answer, loss on responses only), one ``target`` stream;
- ``planted``: the ``planted`` suite's five domains as tasks with per-domain validation (as
  ``tandem taskpgm --tasks`` holds out by default): every task is also part of the target,
  noise and the trivial pattern included;
- ``tasks-one-stream``: ``make_task_suite`` with its three target streams interleaved into one
  (blocks of ``seq_len`` tokens, round-robin): the same target given as one file, so there is a
  single probe group and ``group_gain`` is ``max(gain, 0)``.

Run with the tuning seeds only (never the evaluation seeds 0-2 of taskpgm_quality.py):

    python benchmarks/tune_taskpgm.py [--seeds 100,101,102] [--suites tasks,sft,...] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import multiprocessing
import tempfile
import time
from typing import Any

import _common
import numpy as np
import taskpgm_quality
from _common import Report

SUITES = ("tasks", "sft", "planted", "tasks-one-stream")
UTILITIES = ("gain", "group_gain")
BASELINES = ("uniform", "size")


# ----------------------------------------------------------------------------- suites
def corpus_of(spec: dict) -> Any:
    """The suite ``spec["suite"]`` for seed ``spec["seed"]`` (module docstring)."""
    from tandem_adapters.config import DataConfig
    from tandem_adapters.data import DomainCorpus
    from tandem_adapters.data.curation import make_task_suite
    from tandem_adapters.data.synthetic import make_suite

    name, seed, data = spec["suite"], spec["seed"], DataConfig()
    if name in ("tasks", "tasks-one-stream"):
        corpus = make_task_suite(seed=seed)
        if name == "tasks":
            return corpus
        stream = interleave(corpus.val, spec["seq_len"])
        return DomainCorpus(
            corpus.domains, corpus.train, ("target",), (stream,), corpus.vocab_size, None
        )
    if name not in ("sft", "planted"):
        raise ValueError(f"unknown suite {name!r}; available: {SUITES}")
    return make_suite(
        name,
        seed=seed,
        vocab_size=data.suite_vocab_size,
        tokens_per_domain=data.suite_tokens_per_domain,
        val="target" if name == "sft" else "per_domain",
        sft_layout=data.sft_layout,
    )


def interleave(streams: tuple, block: int) -> np.ndarray:
    """One stream: blocks of ``block`` tokens of each stream in turn, while all have one left."""
    blocks = min(len(s) for s in streams) // block
    parts = [np.asarray(s[i * block : (i + 1) * block]) for i in range(blocks) for s in streams]
    return np.concatenate(parts)


def sizes_of(corpus: Any) -> np.ndarray:
    """Training tokens per task (the size-proportional mixture)."""
    return np.array([len(s) for s in corpus.train], dtype=np.float64)


# ----------------------------------------------------------------------------- jobs (workers)
def learn(spec: dict) -> dict:
    """Fine-tunes and probe pass once; the mixture of every utility from the same statistics."""
    from tandem_adapters.taskpgm_job import _solve, run_taskpgm

    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="taskpgm-tune-") as tmp:
        cfg = taskpgm_quality.job_config(spec, tmp)
        if spec.get("taskpgm"):  # smaller fine-tunes in the smoke test only
            cfg = cfg.replace(taskpgm=spec["taskpgm"])
        out = run_taskpgm(cfg, tasks=corpus_of(spec), overwrite=True, echo=len)
    # the job's solve with only the utility changed; the base model's loss on the whole probe
    # set enters "gain" as a constant shift, which standardisation removes
    group = np.vstack([out.base_loss, out.group_loss])
    whole = np.concatenate([[out.base_loss.mean()], out.task_loss])
    mixtures, utilities = {}, {}
    for kind in UTILITIES:
        settings = dataclasses.replace(cfg.taskpgm, utility=kind)
        pgm = _solve(settings, D=out.D, group=group, whole=whole)
        mixtures[kind], utilities[kind] = pgm.p, pgm.u
    default = mixtures[cfg.taskpgm.utility] if cfg.taskpgm.utility in mixtures else out.p
    if not np.allclose(default, out.p, atol=1e-9):
        raise AssertionError("the re-solved default mixture differs from run_taskpgm's")
    return {
        "tasks": out.tasks,
        "mixtures": mixtures,
        "u": utilities,
        "group_loss": out.group_loss,
        "base_loss": out.base_loss,
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }


def fresh(spec: dict, alpha: tuple) -> dict:
    """A fresh model trained with the fixed mixture ``alpha``: the mean target loss."""
    import tandem_core as tc
    from tandem_adapters.jobs import build_run

    start, cpu = time.perf_counter(), time.process_time()
    corpus = corpus_of(spec)
    weights = tc.natural([max(a, 1e-12) for a in alpha])
    result = build_run(taskpgm_quality.job_config(spec), corpus, transform=weights).run(
        progress=False
    )
    return {
        "target": float(np.mean(result.val_losses)),
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }


# ----------------------------------------------------------------------------- orchestration
def run_all(specs: list[dict], jobs: int, echo: Any) -> dict:
    """Every (suite, seed): learn, then a fresh model per distinct mixture."""
    key = taskpgm_quality._key
    out: dict = {}
    ctx = multiprocessing.get_context("spawn")
    init = taskpgm_quality._init_worker
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init) as pool:
        pending: dict = {}

        def submit(entry: dict) -> None:
            queued = {a for _, e, a in pending.values() if e is entry}
            for alpha in set(entry["mixtures"].values()) - set(entry["fresh"]) - queued:
                pending[pool.submit(fresh, entry["spec"], alpha)] = ("fresh", entry, alpha)

        for spec in specs:
            corpus = corpus_of(spec)
            n = len(corpus.domains)
            entry = {
                "spec": spec,
                "tasks": corpus.domains,
                "mixtures": {"uniform": key(np.ones(n)), "size": key(sizes_of(corpus))},
                "fresh": {},
            }
            out[(spec["suite"], spec["seed"])] = entry
            pending[pool.submit(learn, spec)] = ("learn", entry, None)
        for entry in out.values():
            submit(entry)
        done = 0
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                kind, entry, alpha = pending.pop(fut)
                value = fut.result()
                done += 1
                if kind == "fresh":
                    entry["fresh"][alpha] = value
                    continue
                entry["learned"] = value
                for name, p in value["mixtures"].items():
                    entry["mixtures"][name] = key(p)
                submit(entry)
                echo(
                    f"  [jobs {done}/{done + len(pending)}] {entry['spec']['suite']} seed "
                    f"{entry['spec']['seed']}: TaskPGM learned in {value['seconds']:.0f} s"
                )
    return out


# ----------------------------------------------------------------------------- tables
def summarize(report: Report, entries: list[dict]) -> dict:
    """One suite's tables; returns {mixture: [target loss per seed]}."""
    from tandem_adapters.bench import format_table

    seeds = [e["spec"]["seed"] for e in entries]
    names = [*BASELINES, *UTILITIES]
    losses = {n: [e["fresh"][e["mixtures"][n]]["target"] for e in entries] for n in names}
    rows = []
    for name in names:
        row = {"mixture": name, "target": taskpgm_quality.mean_std(losses[name])}
        row.update({f"s{s}": x for s, x in zip(seeds, losses[name])})
        rows.append(row)
    columns = [("mixture", "mixture", ""), ("target", "target loss", "")]
    columns += [(f"s{s}", f"seed {s}", ".4f") for s in seeds]
    report(format_table(rows, columns))
    tasks = entries[0]["tasks"]
    wrows = [
        {"mixture": n, **dict(zip(tasks, np.mean([e["mixtures"][n] for e in entries], axis=0)))}
        for n in names
    ]
    report("mixtures (mean over seeds):")
    report(format_table(wrows, [("mixture", "mixture", ""), *((t, t, ".3f") for t in tasks)]))
    report("who wins per seed (lower target loss):")
    pairs = [("group_gain", "gain"), *((u, b) for u in UTILITIES for b in BASELINES)]
    for a, b in pairs:
        won = [a if x < y else b if y < x else "tie" for x, y in zip(losses[a], losses[b])]
        k = sum(w == a for w in won)
        report(
            f"  {a} vs {b}: {k}/{len(won)} "
            f"({', '.join(f'seed {s}: {w}' for s, w in zip(seeds, won))})"
        )
    diff = np.subtract(losses["group_gain"], losses["gain"])
    spread = max(float(np.std(losses[n], ddof=1)) if len(seeds) > 1 else 0.0 for n in UTILITIES)
    report(
        f"  group_gain - gain: mean {diff.mean():+.4f} (per seed "
        f"{', '.join(f'{d:+.4f}' for d in diff)}); seed spread (larger std of the two) "
        f"{spread:.4f}"
    )
    return losses


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="100,101,102", help="tuning seeds (not 0-2: evaluation)")
    p.add_argument("--suites", default=",".join(SUITES), help=f"some of {', '.join(SUITES)}")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (results do not depend)")
    p.add_argument("--write", action="store_true", help="update RESULTS.md")
    return p.parse_args(argv)


def specs_from(args: argparse.Namespace) -> list[dict]:
    """taskpgm_quality.py's model, steps and batch for every (suite, seed)."""
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise SystemExit(f"--suites: unknown {unknown}; available: {', '.join(SUITES)}")
    base = taskpgm_quality.specs_from(taskpgm_quality.parse(["--seeds", args.seeds]))
    return [{**spec, "suite": suite, "variants": {}} for suite in suites for spec in base]


def main(argv: list[str] | None = None) -> Report:
    from tandem_adapters.config import TaskPGMConfig

    args = parse(argv)
    _common.setup_env()
    start = time.perf_counter()
    specs = specs_from(args)
    s, d = specs[0], TaskPGMConfig()
    report = Report()
    report(
        f"setup: as taskpgm_quality.py (torch, tiny GPT d={s['d_model']} L={s['n_layer']}, seq "
        f"{s['seq_len']}, {s['batch_per_domain']} rows per task per step, {s['steps']} steps per "
        f"fresh model); tuning seeds {args.seeds}; TaskPGM library defaults (finetune_steps "
        f"{d.finetune_steps}, affinity {d.affinity}, lam {d.lam}, method {d.method}; probe: the "
        f"validation streams; default utility {d.utility}), utility {' vs '.join(UTILITIES)} "
        "solved from the same fine-tunes and probe pass"
    )
    results = run_all(specs, args.jobs, report)
    for suite in dict.fromkeys(spec["suite"] for spec in specs):
        entries = [v for (name, _), v in sorted(results.items()) if name == suite]
        groups = entries[0]["learned"]["base_loss"].size
        report(f"\n## {suite} ({len(entries[0]['tasks'])} tasks, {groups} probe group(s))")
        summarize(report, entries)
    cpu = sum(
        e["learned"]["cpu"] + sum(f["cpu"] for f in e["fresh"].values()) for e in results.values()
    )
    report(f"\njobs' CPU time: {cpu:.0f} s in all")
    title = "TaskPGM utility (tuning seeds)"
    _common.finish(report, "tune_taskpgm", title, start, write=args.write)
    return report


if __name__ == "__main__":
    main()
