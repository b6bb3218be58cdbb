"""The evidence behind TANDEM's defaults: step-size rules x output rules, across suites and budgets.

For each suite (planted, restricted, realtext), proxy budget (300, 1000, 3000 steps), model size
and tuning seed (100, 101; the quality benchmark evaluates on 0-2), TANDEM learns a mixture with
each candidate step-size rule; every output of each run (the time average of all updates, the
average of the second half, the last mixture) trains a fresh model of the same size for the same
budget, as does the uniform mixture. The score of a (rule, output) pair in a case is its fresh
model's target validation loss minus the best pair's in that case: a default must be near the
best everywhere, so the table reports the mean and the worst of that shortfall, and the loss
relative to uniform's.

Step-size rules (``eta_alpha``): ``const:x`` a fixed value; ``sqrt:c`` the mirror-descent rate
``c * sqrt(ln M / T)`` with T the run's number of mixture updates. Usage (about 2 hours on 2
cores; not part of ``nox -s bench``):

    python benchmarks/tune_defaults.py [--write] [--jobs 2] [--budgets 300,1000,3000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import math
import multiprocessing
import time
from pathlib import Path

import _common
import numpy as np
import quality
from _common import Report

RULES = ("const:0.3", "const:1", "sqrt:2", "sqrt:4", "sqrt:8")
OUTPUTS = ("average", "tail", "last")
SUITES = {
    "planted": {"seq_len": 32, "tokens_per_domain": 20_000, "domains": 5},
    "restricted": {"seq_len": 32, "tokens_per_domain": 20_000, "domains": 4},
    "realtext": {"seq_len": 64, "tokens_per_domain": 200_000, "domains": 5},
}
PROBE, FREE = 5, 20


def updates(budget: int, probe: int = PROBE, free: int = FREE) -> int:
    """Mixture updates of a TANDEM run of ``budget`` proxy steps (one per episode's probe end)."""
    return 0 if budget < probe else (budget - probe) // (probe + free) + 1


def eta(rule: str, budget: int, m: int) -> float:
    kind, _, value = rule.partition(":")
    if kind == "const":
        return float(value)
    return float(value) * math.sqrt(math.log(m) / max(updates(budget), 1))


def spec(suite: str, seed: int, budget: int, d_model: int) -> dict:
    return {
        "suite": suite,
        "seed": seed,
        "steps": budget,
        "d_model": d_model,
        "n_layer": 2,
        "n_head": 2,
        "batch_per_domain": 8,
        "val_batch_size": 32,
        "eval_windows": 128,
        "curve_points": 1,
        "tandem": {},
        **SUITES[suite],
    }


def learn(s: dict, rule: str) -> list:
    s = {**s, "tandem": {"eta_alpha": eta(rule, s["steps"], s["domains"]), "free_steps": FREE}}
    return quality.learn(s, "tandem", "torch")["trajectory"].tolist()


def outputs(trajectory: list) -> dict[str, tuple]:
    traj = np.asarray(trajectory)
    return {
        "average": quality._key(traj.mean(0)),
        "tail": quality._key(traj[len(traj) // 2 :].mean(0)),
        "last": quality._key(traj[-1]),
    }


def run_cases(cases: list[dict], rules: list[str], jobs: int, echo) -> dict:
    """Learn every rule, then train every distinct output; results per case."""
    ctx = multiprocessing.get_context("spawn")
    results = {i: {"spec": c, "traj": {}, "fresh": {}} for i, c in enumerate(cases)}
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=quality._init_worker) as pool:
        pending = {}
        for i, c in results.items():
            for rule in rules:
                pending[pool.submit(learn, c["spec"], rule)] = ("learn", i, rule)
            uniform = quality._key(np.ones(c["spec"]["domains"]))
            c["fresh"][uniform] = None  # claimed
            pending[pool.submit(quality.fresh, c["spec"], uniform)] = ("fresh", i, uniform)
        done = 0
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                kind, i, what = pending.pop(fut)
                value, c = fut.result(), results[i]
                done += 1
                if kind == "fresh":
                    c["fresh"][what] = value["target"]
                    echo(f"  [{done}] fresh model of case {i} trained ({len(pending)} jobs left)")
                    continue
                c["traj"][what] = value
                for alpha in outputs(value).values():
                    if alpha not in c["fresh"]:
                        c["fresh"][alpha] = None  # claimed
                        pending[pool.submit(quality.fresh, c["spec"], alpha)] = ("fresh", i, alpha)
                s = c["spec"]
                echo(f"  [{done}] {s['suite']} B={s['steps']} d={s['d_model']} seed {s['seed']}")
    return results


def table(report: Report, results: dict) -> None:
    from tandem_adapters.bench import format_table

    pairs = list(itertools.product(rules_of(results), OUTPUTS))
    short: dict = {p: [] for p in pairs}
    versus: dict = {p: [] for p in pairs}
    groups: dict = {}
    for c in results.values():
        s = c["spec"]
        uniform = c["fresh"][quality._key(np.ones(s["domains"]))]
        losses = {(r, o): c["fresh"][outputs(c["traj"][r])[o]] for r, o in pairs}
        best = min(uniform, *losses.values())
        for p, v in losses.items():
            short[p].append(v - best)
            versus[p].append(v - uniform)
            groups.setdefault((s["suite"], s["steps"]), {}).setdefault(p, []).append(v - uniform)
    rows = [
        {
            "rule": r,
            "output": o,
            "vs": float(np.mean(versus[(r, o)])),
            "vs_worst": float(np.max(versus[(r, o)])),
            "wins": f"{sum(v < 0 for v in versus[(r, o)])}/{len(versus[(r, o)])}",
            "short": float(np.mean(short[(r, o)])),
            "short_worst": float(np.max(short[(r, o)])),
            **{f"{k[0]}/{k[1]}": float(np.mean(g[(r, o)])) for k, g in sorted(groups.items())},
        }
        for r, o in pairs
    ]
    rows.sort(key=lambda row: row["short"])
    cols = [
        ("rule", "eta_alpha rule", ""),
        ("output", "output", ""),
        ("vs", "vs uniform", "+.4f"),
        ("vs_worst", "worst", "+.4f"),
        ("wins", "beats uniform", ""),
        ("short", "shortfall", ".4f"),
        ("short_worst", "worst", ".4f"),
        *((f"{k[0]}/{k[1]}", f"{k[0][:4]} B{k[1]}", "+.3f") for k in sorted(groups)),
    ]
    report(format_table(rows, cols))
    report(
        "vs uniform: the fresh model's target loss minus the uniform mixture's in the same case "
        "(suite, budget, model, seed), nats, mean and worst over cases (negative: better than "
        "uniform); shortfall: minus the best of every pair and uniform in the case; columns "
        "after it: mean 'vs uniform' per suite and budget B"
    )


def rules_of(results: dict) -> list[str]:
    """The rules every case of ``results`` ran, ordered by kind and value."""
    common = set.intersection(*(set(c["traj"]) for c in results.values()))
    return sorted(common, key=lambda r: (r.split(":")[0], float(r.split(":")[1])))


def load(paths: list[str]) -> dict:
    """Saved results (``--save``) of several runs merged by case."""
    cases: dict = {}
    for path in paths:
        for c in json.loads(Path(path).read_text()).values():
            s = c["spec"]
            key = (s["suite"], s["steps"], s["d_model"], s["seed"])
            entry = cases.setdefault(key, {"spec": s, "traj": {}, "fresh": {}})
            entry["traj"].update(c["traj"])
            entry["fresh"].update({tuple(a): v for a, v in c["fresh"]})
    return dict(enumerate(cases.values()))


def main(argv: list[str] | None = None) -> Report:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suites", default="planted,restricted,realtext")
    p.add_argument("--budgets", default="300,1000,3000")
    p.add_argument("--seeds", default="100,101")
    p.add_argument("--d-models", default="32", help="model sizes (d_model, 2 layers)")
    p.add_argument("--rules", default=",".join(RULES), help="step-size rules to compare")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--save", default="", help="also write the raw results to this JSON file")
    p.add_argument("--load", default="", help="tabulate saved results (comma-separated files)")
    p.add_argument("--write", action="store_true", help="update RESULTS.md")
    args = p.parse_args(argv)
    _common.setup_env()
    start = time.perf_counter()
    report = Report()
    rules = args.rules.split(",")
    cases = [
        spec(su, int(seed), int(b), int(d))
        for su in args.suites.split(",")
        for b in args.budgets.split(",")
        for d in args.d_models.split(",")
        for seed in args.seeds.split(",")
    ]
    report(
        f"setup: TANDEM K={PROBE} E={FREE} (other keys: library defaults), tiny GPT L=2, "
        f"8 rows/domain; suites {args.suites}; budgets {args.budgets}; d_model {args.d_models}; "
        f"tuning seeds {args.seeds}; rules {', '.join(rules)}; updates per budget: "
        + ", ".join(f"{b}: {updates(int(b))}" for b in args.budgets.split(","))
    )
    if args.load:
        results = load(args.load.split(","))
    else:
        results = run_cases(cases, rules, args.jobs, print)
    if args.save:
        raw = {
            str(i): {"spec": c["spec"], "traj": c["traj"], "fresh": list(c["fresh"].items())}
            for i, c in results.items()
        }
        Path(args.save).write_text(json.dumps(raw))
    table(report, results)
    _common.finish(report, "tune_defaults", "Choosing TANDEM's defaults", start, write=args.write)
    return report


if __name__ == "__main__":
    main()
