"""TaskPGM's task mixture against the uniform and the size-proportional mixtures.

The suite is ``tandem_adapters.data.curation.make_task_suite``: six tasks of different sizes, two
of them near-duplicates (``a``, ``a_dup``), two harmful (``conflict``, an unrelated chain, and
``noise``), and a target that is a held-out equal mix of the useful chains (three validation
streams; the target loss is their mean). For each seed, ``tandem taskpgm``'s Python API
(``run_taskpgm``) learns the mixture with the library defaults (single-task fine-tunes from the
base model, the probe = the target streams); then a fresh tiny GPT (torch) trains with each
mixture for the same steps and batch (every task's rows each step, weighted by the mixture).

The base model, as in ``tandem taskpgm`` with the built-in tiny GPT, is untrained (the job
fine-tunes fresh copies of ``[model]``). Reported: the target loss (mean +- std over seeds, every
seed, wins per seed), the mixtures, the weight of the harmful tasks and how the duplicate pair
shares its weight. ``--variant`` adds mixtures solved from the same fine-tunes and probe
statistics with other TaskPGM settings (analysis only, not goals); the default one is
``utility = "gain"``, the default until the sweep of ``benchmarks/tune_taskpgm.py`` (tuning seeds,
four suites) made it ``"group_gain"`` (docs/methods.md, "TaskPGM: Defaults" and "Measured").

    python benchmarks/taskpgm_quality.py [--write] [--seeds 0,1,2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import tempfile
import time
from typing import Any

import _common
import numpy as np
from _common import Report

BASELINES = ["uniform", "size"]
# analysis rows: mixtures solved from the same fine-tunes and probe statistics with other settings
VARIANTS = ["taskpgm-gain:utility=gain"]


# ----------------------------------------------------------------------------- jobs (workers)
def job_config(spec: dict, run_dir: str = "") -> Any:
    from tandem_adapters.config import JobConfig

    run = {"backend": "torch", "progress": False, **({"run_dir": run_dir} if run_dir else {})}
    return JobConfig.from_mapping(
        {
            "run": run,
            "backend": {"threads": 1},
            "data": {"seq_len": spec["seq_len"]},
            "model": {
                "d_model": spec["d_model"],
                "n_layer": spec["n_layer"],
                "n_head": spec["n_head"],
                "seed": spec["seed"],
            },
            "train": {
                "method": "natural",  # a fixed mixture (run_taskpgm's fine-tunes use it too)
                "steps": spec["steps"],
                "batch_per_domain": spec["batch_per_domain"],
                "eval_max_per_domain": spec["eval_windows"],
                "log_every": spec["steps"],
                "seed": spec["seed"],
            },
        }
    )


def suite(spec: dict) -> Any:
    from tandem_adapters.data.curation import make_task_suite

    return make_task_suite(seed=spec["seed"])


def learn(spec: dict) -> dict:
    """TaskPGM with the library defaults; also the ``variants`` mixtures from the same stats."""
    import tandem_core as tc
    from tandem_adapters.config import TaskPGMConfig
    from tandem_adapters.taskpgm_job import run_taskpgm

    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="taskpgm-bench-") as tmp:
        cfg = job_config(spec, tmp)
        if spec.get("taskpgm"):  # smaller fine-tunes in the smoke test only
            cfg = cfg.replace(taskpgm=spec["taskpgm"])
        out = run_taskpgm(cfg, tasks=suite(spec), overwrite=True, echo=len)
    variants = {}
    for name, settings in spec["variants"].items():
        # what run_taskpgm's solve would give with these settings (docs/methods.md, "TaskPGM");
        # the job's default utility unless the variant names one
        settings = {"utility": TaskPGMConfig().utility, **settings}
        per_group = settings["utility"] == "group_gain"
        variants[name] = tc.taskpgm_mixture(
            D=out.D,
            val_loss=out.group_loss if per_group else out.task_loss,
            base_loss=out.base_loss if per_group else float(out.base_loss.mean()),
            **settings,
        ).p
    return {
        "p": out.p,
        "u": out.u,
        "S": out.S,
        "task_loss": out.task_loss,
        "group_loss": out.group_loss,
        "base_loss": out.base_loss,
        "variants": variants,
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }


def fresh(spec: dict, alpha: tuple) -> dict:
    """A fresh model trained with the fixed mixture ``alpha``: the mean target loss."""
    import tandem_core as tc
    from tandem_adapters.jobs import build_run

    start, cpu = time.perf_counter(), time.process_time()
    corpus = suite(spec)
    run = build_run(job_config(spec), corpus, transform=tc.natural([max(a, 1e-12) for a in alpha]))
    result = run.run(progress=False)
    losses = dict(zip(corpus.val_domains, map(float, result.val_losses)))
    return {
        "target": float(np.mean(result.val_losses)),
        "groups": losses,
        "seconds": time.perf_counter() - start,
        "cpu": time.process_time() - cpu,
    }


def _init_worker() -> None:
    _common.setup_env()


def _key(alpha: Any) -> tuple:
    a = np.asarray(alpha, dtype=np.float64)
    return tuple(np.round(a / a.sum(), 6))


# ----------------------------------------------------------------------------- orchestration
def run_all(specs: list[dict], jobs: int, echo: Any) -> dict:
    """TaskPGM on every seed, then a fresh model per mixture; results by seed."""
    out: dict = {}
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
        pending: dict = {}
        for spec in specs:
            known = suite(spec).known_answer
            sizes = np.array(list(known["sizes"].values()), dtype=np.float64)
            entry = {
                "spec": spec,
                "known": known,
                "mixtures": {"uniform": _key(np.ones(sizes.size)), "size": _key(sizes)},
                "fresh": {},
            }
            out[spec["seed"]] = entry
            pending[pool.submit(learn, spec)] = ("learn", entry, None)
        for entry in out.values():
            for alpha in entry["mixtures"].values():
                pending[pool.submit(fresh, entry["spec"], alpha)] = ("fresh", entry, alpha)
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
                entry["mixtures"]["taskpgm"] = _key(value["p"])
                for name, p in value["variants"].items():
                    entry["mixtures"][name] = _key(p)
                queued = {a for _, e, a in pending.values() if e is entry}
                for alpha in set(entry["mixtures"].values()) - set(entry["fresh"]) - queued:
                    pending[pool.submit(fresh, entry["spec"], alpha)] = ("fresh", entry, alpha)
                echo(
                    f"  [jobs {done}/{done + len(pending)}] seed {entry['spec']['seed']}: TaskPGM "
                    f"learned in {value['seconds']:.0f} s"
                )
    return out


# ----------------------------------------------------------------------------- tables
def mean_std(values: list[float], fmt: str = ".4f") -> str:
    a = np.asarray(values, dtype=np.float64)
    std = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{format(a.mean(), fmt)} ± {format(std, fmt)}"


def summarize(report: Report, entries: list[dict], variants: list[str]) -> dict:
    """Tables of the mixtures and their fresh models; returns the target losses by mixture."""
    from tandem_adapters.bench import format_table

    known = entries[0]["known"]
    tasks = list(known["sizes"])
    seeds = [e["spec"]["seed"] for e in entries]
    harmful = [tasks.index(t) for t in known["harmful"]]
    pair = [tasks.index(t) for t in known["redundant"][0]]
    names = [*BASELINES, "taskpgm", *variants]
    rows, losses, weights = [], {}, {}
    for name in names:
        alphas = [np.asarray(e["mixtures"][name]) for e in entries]
        target = [e["fresh"][e["mixtures"][name]]["target"] for e in entries]
        groups = [e["fresh"][e["mixtures"][name]]["groups"] for e in entries]
        losses[name], weights[name] = target, np.mean(alphas, axis=0)
        row = {"mixture": name, "target": mean_std(target)}
        row.update({f"s{s}": t for s, t in zip(seeds, target)})
        row.update({g: np.mean([x[g] for x in groups]) for g in groups[0]})
        row["harmful"] = np.mean([a[harmful].sum() for a in alphas])
        row["pair"] = np.mean([a[pair].sum() for a in alphas])
        row["split"] = np.mean([abs(a[pair[0]] - a[pair[1]]) for a in alphas])
        rows.append(row)
    groups = list(entries[0]["fresh"][entries[0]["mixtures"]["uniform"]]["groups"])
    report(
        format_table(
            rows,
            [
                ("mixture", "mixture", ""),
                ("target", "target val loss", ""),
                *((f"s{s}", f"seed {s}", ".4f") for s in seeds),
                *((g, g, ".3f") for g in groups),
                ("harmful", "harmful weight", ".3f"),
                ("pair", "a + a_dup", ".3f"),
                ("split", "|a - a_dup|", ".3f"),
            ],
        )
    )
    report(
        "target val loss: the fresh model's mean loss over the three target streams (mean ± std "
        f"over seeds; the chains' mean entropy rate, the best possible, is "
        f"{np.mean([e['known']['target_entropy'] for e in entries]):.3f}); target_x: its loss "
        "on each stream (mean over seeds); harmful weight: conflict + noise; a + a_dup: the "
        "near-duplicate pair's total and how unevenly it is split (mean over seeds)."
    )
    wrows = [{"mixture": n, **dict(zip(tasks, weights[n]))} for n in names]
    wrows.append({"mixture": "ideal (known answer)", **known["ideal"]})
    sizes = np.array(list(known["sizes"].values()), dtype=np.float64)
    report(
        "\nmixtures (mean over seeds); task sizes in units: "
        + ", ".join(f"{t} {int(n)}" for t, n in zip(tasks, sizes))
    )
    report(format_table(wrows, [("mixture", "mixture", ""), *((t, t, ".3f") for t in tasks)]))
    report(f"\nTaskPGM's utility u and affinity S (seed {seeds[0]}):")
    learned = entries[0]["learned"]
    report("  u: " + ", ".join(f"{t} {v:+.2f}" for t, v in zip(tasks, learned["u"])))
    for t, row in zip(tasks, learned["S"]):
        report(f"  S[{t}]: " + " ".join(f"{v:.2f}" for v in row))
    report("\nwho wins per seed (lower target loss):")
    for name in ["taskpgm", *variants]:
        for base in BASELINES:
            won = [name if x < y else base for x, y in zip(losses[name], losses[base])]
            report(
                f"  {name} vs {base}: " + ", ".join(f"seed {s}: {w}" for s, w in zip(seeds, won))
            )
    return {
        "losses": losses,
        "weights": weights,
        "harmful": harmful,
        "pair": pair,
        "why": why(entries, tasks),
    }


def why(entries: list[dict], tasks: list[str]) -> str:
    """What the default utility saw: each fine-tune's probe losses and gains, the top u."""
    from tandem_adapters.config import TaskPGMConfig

    utility = TaskPGMConfig().utility
    loss = np.mean([e["learned"]["task_loss"] for e in entries], axis=0)
    base = np.mean([e["learned"]["base_loss"].mean() for e in entries])
    clipped = np.mean(
        [
            np.maximum(e["learned"]["base_loss"] - e["learned"]["group_loss"], 0).mean(axis=1)
            for e in entries
        ],
        axis=0,
    )
    top: dict[str, list[int]] = {}
    for e in entries:
        top.setdefault(tasks[int(np.argmax(e["learned"]["u"]))], []).append(e["spec"]["seed"])
    text = (
        "the single-task models' loss on the whole probe set (the target mix; mean over seeds) "
        + ", ".join(f"{t} {x:.2f}" for t, x in zip(tasks, loss))
        + f" (base {base:.2f}); their gain per target stream clipped at 0, averaged: "
        + ", ".join(f"{t} {x:.2f}" for t, x in zip(tasks, clipped))
    )
    if utility == "gain":
        text += (
            ": each specialist is confidently wrong on the chains it did not learn, the noise "
            "task's model predicts about uniformly"
        )
    return (
        text
        + f"; utility {utility!r} ranks "
        + "; ".join(f"{t} first on seeds {', '.join(map(str, s))}" for t, s in top.items())
    )


def goals(report: Report, stats: dict, variants: list[str]) -> None:
    """Goal verdicts: TaskPGM (library defaults) beats each baseline on >= 3 seeds."""
    losses = stats["losses"]
    n = len(losses["taskpgm"])
    missed = False
    for name in ["taskpgm", *variants]:
        for base in BASELINES:
            k = sum(x < y for x, y in zip(losses[name], losses[base]))
            detail = (
                f"{np.mean(losses[name]):.4f} vs {np.mean(losses[base]):.4f} "
                f"(better on {k}/{n} seeds)"
            )
            if name == "taskpgm":
                report.goal(f"taskpgm beats {base} on >= 3 seeds", k >= min(3, n), detail)
                missed |= k < min(3, n)
            else:
                report(f"  [info] {name} (analysis) beats {base}: {detail}")
        if name == "taskpgm" and missed:
            report("    why: " + stats["why"])
        w = stats["weights"][name]
        harmful, pair = float(w[stats["harmful"]].sum()), stats["pair"]
        uniform_share = len(stats["harmful"]) / w.size
        report(
            f"  [info] {name}: harmful tasks' weight {harmful:.3f} (uniform {uniform_share:.3f}); "
            f"near-duplicates a + a_dup = {w[pair].sum():.3f} (a {w[pair[0]]:.3f}, a_dup "
            f"{w[pair[1]]:.3f}); mean over seeds"
        )


# ----------------------------------------------------------------------------- main
def parse_variants(items: list[str]) -> dict:
    """``name:key=value,key=value`` -> {name: settings} (``tc.taskpgm_mixture`` keywords)."""
    out = {}
    for item in items:
        name, _, body = item.partition(":")
        settings: dict[str, Any] = {}
        for pair in filter(None, body.split(",")):
            key, _, value = pair.partition("=")
            try:
                settings[key] = float(value) if key in ("lam", "mu", "mix", "sigma") else value
            except ValueError as err:
                raise SystemExit(f"--variant {item!r}: {key} needs a number") from err
        out[name] = settings
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="evaluation seeds")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every fresh model")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--batch-per-domain", type=int, default=8, help="rows per task per step")
    p.add_argument("--eval-windows", type=int, default=128, help="windows per target stream")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME:KEY=VALUE,...",
        help="another mixture from the same fine-tunes, e.g. lam4:lam=4 (analysis only; "
        f"default {VARIANTS[0]})",
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (results do not depend)")
    p.add_argument("--write", action="store_true", help="update RESULTS.md")
    return p.parse_args(argv)


def specs_from(args: argparse.Namespace) -> list[dict]:
    variants = parse_variants(VARIANTS if args.variant is None else args.variant)
    return [
        {
            "seed": seed,
            "steps": args.steps,
            "d_model": args.d_model,
            "n_layer": args.n_layer,
            "n_head": args.n_head,
            "seq_len": args.seq_len,
            "batch_per_domain": args.batch_per_domain,
            "eval_windows": args.eval_windows,
            "variants": variants,
        }
        for seed in (int(s) for s in args.seeds.split(","))
    ]


def main(argv: list[str] | None = None) -> Report:
    from tandem_adapters.config import TaskPGMConfig

    args = parse(argv)
    _common.setup_env()
    start = time.perf_counter()
    specs = specs_from(args)
    report = Report()
    s = specs[0]
    defaults = TaskPGMConfig()
    report(
        f"setup: torch backend, tiny GPT d={s['d_model']} L={s['n_layer']} heads={s['n_head']}, "
        f"seq {s['seq_len']}, {s['batch_per_domain']} rows per task per step (6 tasks), AdamW lr "
        f"3e-3, {s['steps']} steps for every fresh model; seeds {args.seeds}; TaskPGM: library "
        f"defaults (finetune_steps {defaults.finetune_steps}, utility {defaults.utility}, "
        f"affinity {defaults.affinity}, lam {defaults.lam}, method {defaults.method}; probe: the "
        "target streams)"
    )
    results = run_all(specs, args.jobs, report)
    entries = [results[k] for k in sorted(results)]
    known = entries[0]["known"]
    report(
        f"\n## Suite 'tasks' ({len(entries)} seeds; useful {known['useful']}, harmful "
        f"{known['harmful']}, near-duplicates {known['redundant'][0]})"
    )
    stats = summarize(report, entries, list(s["variants"]))
    goals(report, stats, list(s["variants"]))
    cpu = sum(e["learned"]["cpu"] + sum(f["cpu"] for f in e["fresh"].values()) for e in entries)
    report(
        f"\njobs' CPU time: {cpu:.0f} s in all (an idle machine with --jobs {args.jobs} needs "
        f"about {cpu / args.jobs / 60:.1f} min plus start-up)"
    )
    _common.finish(report, "taskpgm_quality", "TaskPGM quality", start, write=args.write)
    return report


if __name__ == "__main__":
    main()
