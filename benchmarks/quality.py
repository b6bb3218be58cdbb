"""Quality of the learned mixtures on the built-in known-answer suites, every figure measured here.

For each suite (planted, restricted, realtext) and seed, on each backend end to end: the static
mixtures (uniform, natural, temperature), DoReMi and DoGE and TANDEM learn a mixture on a small
proxy with the library's defaults; then a fresh model of the same size trains with each output
mixture for the same budget (rows sampled in proportion to the mixture), on the backend that
learned it, as does every mixture of a coarse grid and every even mixture of a subset of the
domains, the known-useless noise domain left out (the oracle = the best of them on torch,
retrained on JAX for the JAX rows). Reported: the
target validation loss (the objective the mixtures are learned for), held-out losses of every
training domain, the noise-domain weight, and the regret against the oracle; mean +- std over
seeds. A row labelled with a backend learned and trained there.

    python benchmarks/quality.py [--write] [--seeds 0,1,2] [--jobs 2] [--tandem eta_alpha=1]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import multiprocessing
import time
from typing import Any

import _common
import numpy as np
from _common import Report

BACKENDS = ("torch", "jax")
# rows of each backend's table: (backend, name); a learned row's mixture is its method's output
TORCH_ROWS = ["uniform", "natural", "temperature", "doremi", "doge", "tandem"]
JAX_ROWS = ["uniform", "doremi", "tandem"]
ROWS = [("torch", r) for r in TORCH_ROWS] + [("jax", r) for r in JAX_ROWS]
LEARNED = {("torch", "doremi"), ("torch", "doge"), ("torch", "tandem")}
LEARNED |= {("jax", "doremi"), ("jax", "tandem")}
STATIC = ("uniform", "natural", "temperature")
# per suite: sequence length, training tokens per domain, oracle grid denominator
SUITES = {
    "planted": {"seq_len": 32, "tokens_per_domain": 20_000, "grid": 2},
    "restricted": {"seq_len": 32, "tokens_per_domain": 20_000, "grid": 3},
    "realtext": {"seq_len": 64, "tokens_per_domain": 200_000, "grid": 2},
}


# ----------------------------------------------------------------------------- jobs (workers)
def job_config(spec: dict, backend: str, train: dict) -> Any:
    from tandem_adapters.config import JobConfig

    base = {
        "steps": spec["steps"],
        "batch_per_domain": spec["batch_per_domain"],
        "val_batch_size": spec["val_batch_size"],
        "eval_max_per_domain": spec["eval_windows"],
        "log_every": spec["steps"],
        "seed": spec["seed"],
    }
    return JobConfig.from_mapping(
        {
            "run": {"backend": backend, "progress": False},
            "backend": {"threads": 1} if backend == "torch" else {},
            "data": {
                "suite": spec["suite"],
                "seed": spec["seed"],
                "seq_len": spec["seq_len"],
                "suite_tokens_per_domain": spec["tokens_per_domain"],
            },
            "model": {
                "d_model": spec["d_model"],
                "n_layer": spec["n_layer"],
                "n_head": spec["n_head"],
                "seed": spec["seed"],
            },
            "train": {**base, **train},
        }
    )


def learn(spec: dict, method: str, backend: str = "torch") -> dict:
    """Learn a mixture with ``method`` on the proxy, on ``backend`` (library defaults)."""
    from tandem_adapters.jobs import build_run, load_corpus

    train = {"method": method, **(spec["tandem"] if method == "tandem" else {})}
    cfg = job_config(spec, backend, train)
    start = time.perf_counter()
    result = build_run(cfg, load_corpus(cfg.data)).run(progress=False)
    return {
        "average": result.average,
        "last": result.last,
        "trajectory": result.trajectory,
        "seconds": time.perf_counter() - start,
    }


def fresh(spec: dict, alpha: tuple, backend: str = "torch") -> dict:
    """Train a fresh model with the fixed mixture ``alpha`` on ``backend``; validation losses."""
    import tandem_core as tc
    from tandem_adapters.data import TokenSampler, make_suite
    from tandem_adapters.jobs import build_run, load_corpus

    every = max(spec["steps"] // spec["curve_points"], 1)
    # Rows drawn in proportion to alpha (the same rows per step for every mixture), as a final
    # model trains on a mixture; "reweight" would give a concentrated mixture a smaller effective
    # batch (its rows of the other domains weigh ~0) and penalise it for that, not for its data.
    train = {"method": "natural", "eval_every": every, "sampling": "sample"}
    cfg = job_config(spec, backend, train)
    start = time.perf_counter()
    corpus = load_corpus(cfg.data)
    run = build_run(cfg, corpus, transform=tc.natural([max(a, 1e-12) for a in alpha]))
    result = run.run(progress=False)
    per_domain = make_suite(
        spec["suite"],
        seed=spec["seed"],
        val="per_domain",
        tokens_per_domain=spec["tokens_per_domain"],
    )
    held_out = TokenSampler(per_domain, spec["seq_len"], seed=spec["seed"])
    losses = run.engine.evaluate(held_out.validation_sets(spec["eval_windows"]))
    curve = [(m["step"], m["val_loss"]["target"]) for m in result.metrics if "val_loss" in m]
    return {
        "target": float(result.val_losses[0]),
        "domains": dict(zip(per_domain.val_domains, map(float, losses))),
        "curve": curve,
        "seconds": time.perf_counter() - start,
    }


def _init_worker() -> None:
    _common.setup_env()


def grid(num_domains: int, denominator: int, *, without: int | None = None) -> list[tuple]:
    """Every mixture whose weights are multiples of ``1 / denominator`` (``without`` at 0)."""
    out = []
    for parts in itertools.product(range(denominator + 1), repeat=num_domains):
        if sum(parts) == denominator and (without is None or parts[without] == 0):
            out.append(tuple(p / denominator for p in parts))
    return out


def oracle_grid(num_domains: int, denominator: int, *, without: int) -> list[tuple]:
    """The oracle's candidates: ``grid`` and the uniform mixture over every subset of domains.

    Both leave the domain ``without`` (the known-useless noise) at 0. The subsets add the
    even mixtures of 3 and more domains that a coarse grid misses (on real text the best
    mixtures are broad ones).
    """
    out = {_key(a): None for a in grid(num_domains, denominator, without=without)}
    others = [i for i in range(num_domains) if i != without]
    for size in range(1, len(others) + 1):
        for subset in itertools.combinations(others, size):
            out.setdefault(_key([1.0 if i in subset else 0.0 for i in range(num_domains)]), None)
    return list(out)


def _key(alpha: Any) -> tuple:
    a = np.asarray(alpha, dtype=np.float64)
    return tuple(np.round(a / a.sum(), 6))


# ----------------------------------------------------------------------------- orchestration
def new_entry(spec: dict) -> dict:
    """One (suite, seed): its domains, static mixtures and oracle grid, results to come."""
    from tandem_adapters.data import make_suite

    corpus = make_suite(
        spec["suite"], seed=spec["seed"], tokens_per_domain=spec["tokens_per_domain"]
    )
    sizes = np.array([len(s) for s in corpus.train], dtype=np.float64)
    temperature = sizes ** (1 / _temperature())
    noise = corpus.domains.index(corpus.known_answer["noise"])
    return {
        "spec": spec,
        "domains": corpus.domains,
        "known": corpus.known_answer,
        "learned": {},
        "fresh": {},
        "static": {
            "uniform": _key(np.ones(len(sizes))),
            "natural": _key(sizes),
            "temperature": _key(temperature),
        },
        # the noise domain is known to be useless: the grid leaves it out (a third the cost)
        "grid": oracle_grid(len(sizes), spec["grid"], without=noise),
    }


def _temperature() -> float:
    from tandem_core.methods import get_method

    return float(get_method("temperature").make_params().temperature)


def run_all(specs: list[dict], jobs: int, echo: Any) -> dict:
    """All learning and training jobs of ``specs`` on a process pool; results by (suite, seed).

    Torch trains every grid point; once a seed's torch grid is done, its best point (the oracle)
    is retrained on JAX for the JAX rows' regret.
    """
    out = {(s["suite"], s["seed"]): new_entry(s) for s in specs}
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
        pending: dict = {}
        submitted: set = set()

        def train(entry: dict, backend: str, alpha: tuple) -> None:
            key = (entry["spec"]["suite"], entry["spec"]["seed"], backend, alpha)
            if key not in submitted:
                submitted.add(key)
                job = pool.submit(fresh, entry["spec"], alpha, backend)
                pending[job] = ("fresh", entry, (backend, alpha))

        for backend, method in sorted(LEARNED, key=lambda r: r[0] != "jax"):  # JAX first
            for entry in out.values():
                job = pool.submit(learn, entry["spec"], method, backend)
                pending[job] = ("learn", entry, (backend, method))
        for entry in out.values():
            for alpha in [*entry["static"].values(), *entry["grid"]]:
                train(entry, "torch", alpha)
            train(entry, "jax", entry["static"]["uniform"])
        done = 0
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                kind, entry, what = pending.pop(fut)
                value = fut.result()
                done += 1
                if kind == "fresh":
                    entry["fresh"][what] = value
                    if all(("torch", a) in entry["fresh"] for a in entry["grid"]):
                        train(entry, "jax", oracle_point(entry))
                    if done % 10 == 0:
                        echo(f"  [jobs {done}/{done + len(pending)}] fresh models trained")
                    continue
                entry["learned"][what] = value
                train(entry, what[0], _key(value["average"]))
                echo(
                    f"  [jobs {done}/{done + len(pending)}] {entry['spec']['suite']} "
                    f"seed {entry['spec']['seed']}: {what[1]} ({what[0]}) learned in "
                    f"{value['seconds']:.0f} s"
                )
    return out


def oracle_point(entry: dict) -> tuple:
    """The grid mixture with the lowest target loss on torch."""
    return min(entry["grid"], key=lambda a: entry["fresh"][("torch", a)]["target"])


def mixture_of(entry: dict, row: tuple) -> tuple:
    """The mixture a row ``(backend, name)`` trains with."""
    backend, name = row
    if name == "oracle":
        return oracle_point(entry)
    if name in entry["static"]:
        return entry["static"][name]
    return _key(entry["learned"][row]["average"])


# ----------------------------------------------------------------------------- tables
def mean_std(values: list[float], fmt: str = ".4f") -> str:
    a = np.asarray(values, dtype=np.float64)
    std = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{format(a.mean(), fmt)} ± {format(std, fmt)}"


def label(row: tuple) -> str:
    return f"{row[1]} ({row[0]})"


def summarize(report: Report, entries: list[dict]) -> dict:
    """Tables of one suite; returns per-row statistics."""
    from tandem_adapters.bench import format_table

    domains = entries[0]["domains"]
    noise = domains.index(entries[0]["known"]["noise"])
    up = [domains.index(d) for d in entries[0]["known"]["up"]]
    stats: dict[tuple, dict] = {}
    rows = [*ROWS[: len(TORCH_ROWS)], ("torch", "oracle"), *ROWS[len(TORCH_ROWS) :]]
    rows.append(("jax", "oracle"))
    for row in rows:
        target, regret, weights, held = [], [], [], []
        for e in entries:
            alpha = mixture_of(e, row)
            res = e["fresh"][(row[0], alpha)]
            target.append(res["target"])
            regret.append(res["target"] - e["fresh"][(row[0], oracle_point(e))]["target"])
            weights.append(np.asarray(alpha))
            held.append([res["domains"][d] for d in domains])
        stats[row] = {
            "target": target,
            "regret": regret,
            "weights": np.mean(weights, axis=0),
            "up": [float(np.asarray(w)[up].sum()) for w in weights],
            "held": np.mean(held, axis=0),
        }
    table = []
    for row, s in stats.items():
        uniform = np.mean(stats[(row[0], "uniform")]["regret"])
        rel = np.mean(s["regret"]) / uniform if uniform > 0 else float("nan")
        line = {
            "row": label(row),
            "target": mean_std(s["target"]),
            "regret": mean_std(s["regret"]),
            "rel": rel,
            "noise": s["weights"][noise],
        }
        line.update({f"h_{d}": s["held"][i] for i, d in enumerate(domains)})
        line["h_avg"] = float(np.mean(s["held"]))
        table.append(line)
    cols = [
        ("row", "mixture (backend)", ""),
        ("target", "target val loss", ""),
        ("regret", "regret vs oracle", ""),
        ("rel", "regret / uniform's", ".2f"),
        ("noise", "noise weight", ".3f"),
        *((f"h_{d}", d, ".3f") for d in domains),
        ("h_avg", "domain avg", ".3f"),
    ]
    report(format_table(table, cols))
    report(
        "target val loss: the fresh model's loss on the held-out target set (the objective); "
        "columns after 'noise weight': its held-out loss on each training domain (mean over "
        "seeds) and their average. oracle: the best grid mixture of each seed on torch (the "
        "same mixture retrained on JAX for the JAX rows); a backend's regrets are against its "
        "own oracle row."
    )
    wrows = [
        {"row": label(r), **{d: stats[r]["weights"][i] for i, d in enumerate(domains)}}
        for r in rows
        if r != ("jax", "oracle")
    ]
    report("\nmixtures (mean over seeds; oracle: the best grid point of each seed):")
    report(
        format_table(wrows, [("row", "mixture (backend)", ""), *((d, d, ".3f") for d in domains)])
    )
    diff = max(
        np.abs(
            e["learned"][("torch", "tandem")]["average"]
            - e["learned"][("jax", "tandem")]["average"]
        ).max()
        for e in entries
    )
    report(f"TANDEM torch vs JAX, same seeds: max |alpha_torch - alpha_jax| = {diff:.1e}")
    return stats


def goals(report: Report, suite: str, stats: dict, noise: int) -> None:
    """Print the goal verdicts of one suite for each backend's TANDEM row (``noise``: its index)."""
    for backend in BACKENDS:
        t = stats[(backend, "tandem")]
        for other in ("uniform", "doremi"):
            o = stats[(backend, other)]
            wins = sum(x < y for x, y in zip(t["target"], o["target"]))
            report.goal(
                f"tandem ({backend}) beats {other} ({backend}) on every seed",
                wins == len(t["target"]),
                f"{np.mean(t['target']):.4f} vs {np.mean(o['target']):.4f} "
                f"(better on {wins}/{len(t['target'])} seeds)",
            )
        weight = float(t["weights"][noise])
        report.goal(f"tandem ({backend}) noise weight < 0.05", weight < 0.05, f"{weight:.3f}")
        mine, uniform = np.mean(t["regret"]), np.mean(stats[(backend, "uniform")]["regret"])
        rel = mine / uniform
        report.goal(
            f"tandem ({backend}) regret <= 5% of uniform's",
            rel <= 0.05,
            f"{mine:.4f} vs {uniform:.4f} ({rel:.0%})",
        )
        if suite == "restricted":
            gap = np.abs(np.subtract(t["up"], stats[(backend, "oracle")]["up"]))
            report.goal(
                f"tandem ({backend}) target-relevant weight within 0.1 of the oracle's",
                bool((gap <= 0.1).all()),
                f"{np.mean(t['up']):.3f} vs {np.mean(stats[(backend, 'oracle')]['up']):.3f} "
                f"(largest gap over seeds {gap.max():.3f})",
            )


# ----------------------------------------------------------------------------- plots
def update_steps(spec: dict, method: str, count: int) -> np.ndarray:
    """Proxy step of each mixture update, with 0 (the uniform start) first."""
    from tandem_core.methods import get_method

    if method != "tandem":
        return np.arange(count + 1)  # DoReMi / DoGE: one update per proxy step
    keys = {k: v for k, v in spec["tandem"].items() if k in _SCHEDULE}
    sched = get_method("tandem").make_params(keys).schedule
    return np.array([0, *(sched.probe_steps + i * sched.proxy_steps for i in range(count))])


_SCHEDULE = ("probe_steps", "free_steps", "episode")


def plot(suite: str, entries: list[dict], directory: Any) -> list[str]:
    """alpha trajectories per learning method (torch); target loss vs step per mixture."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    domains = entries[0]["domains"]
    learned = sorted(LEARNED)
    fig, axes = plt.subplots(1, len(learned), figsize=(4.2 * len(learned), 3.4), squeeze=False)
    for ax, row in zip(axes[0], learned):
        traj = np.mean([e["learned"][row]["trajectory"] for e in entries], axis=0)
        x = update_steps(entries[0]["spec"], row[1], len(traj))
        traj = np.vstack([np.full(len(domains), 1 / len(domains)), traj])  # start: uniform
        for i, d in enumerate(domains):
            ax.plot(x, traj[:, i], label=d)
        ax.set(title=label(row), xlabel="proxy step", ylim=(0, 1))
    axes[0][0].set_ylabel("alpha (mean over seeds)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{suite}: mixture trajectories")
    paths = [str(directory / f"quality_{suite}_alpha.png")]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in [*ROWS, ("torch", "oracle")]:
        curves = [e["fresh"][(row[0], mixture_of(e, row))]["curve"] for e in entries]
        x = [c[0] for c in curves[0]]
        y = np.mean([[c[1] for c in curve] for curve in curves], axis=0)
        style = "--" if row[1] == "oracle" else (":" if row[0] == "jax" else "-")
        ax.plot(x, y, marker=".", label=label(row), linestyle=style)
    ax.set(xlabel="training step (fresh model)", ylabel="target validation loss (mean)")
    ax.set_title(f"{suite}: fresh model trained with each mixture")
    ax.legend(fontsize=7)
    paths.append(str(directory / f"quality_{suite}_val.png"))
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suites", default=",".join(SUITES))
    p.add_argument("--seeds", default="0,1,2", help="evaluation seeds (tuning used 100,101)")
    p.add_argument("--steps", type=int, default=400, help="proxy and fresh-model training steps")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--batch-per-domain", type=int, default=8)
    p.add_argument("--val-batch-size", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=128, help="held-out windows per set")
    p.add_argument("--curve-points", type=int, default=4, help="evaluations per fresh run")
    p.add_argument(
        "--tandem",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TANDEM setting other than the library default (for experiments only)",
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (results do not depend)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--write", action="store_true", help="update RESULTS.md and the PNGs")
    return p.parse_args(argv)


def specs_from(args: argparse.Namespace) -> list[dict]:
    from tandem_adapters.config import parse_override

    tandem = {}
    for item in args.tandem:
        _, key, value = parse_override(f"train.{item}")
        tandem[key] = value
    out = []
    for suite in args.suites.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            out.append(
                {
                    "suite": suite,
                    "seed": seed,
                    "steps": args.steps,
                    "d_model": args.d_model,
                    "n_layer": args.n_layer,
                    "n_head": args.n_head,
                    "batch_per_domain": args.batch_per_domain,
                    "val_batch_size": args.val_batch_size,
                    "eval_windows": args.eval_windows,
                    "curve_points": args.curve_points,
                    "tandem": tandem,
                    **SUITES[suite],
                }
            )
    return out


def main(argv: list[str] | None = None) -> Report:
    args = parse(argv)
    _common.setup_env()
    start = time.perf_counter()
    specs = specs_from(args)
    report = Report()
    s = specs[0]
    changed = f" except TANDEM {s['tandem']}" if s["tandem"] else ""
    suites = ", ".join(
        f"{k} {v['seq_len']}/{v['tokens_per_domain']}/{v['grid']}" for k, v in SUITES.items()
    )
    report(
        f"setup: tiny GPT d={s['d_model']} L={s['n_layer']} heads={s['n_head']}, "
        f"{s['batch_per_domain']} rows per domain and step (proxies: loss reweighting; fresh "
        f"models: the same number of rows sampled by the mixture), AdamW lr 3e-3, {s['steps']} "
        f"steps for the proxy and for each fresh model; seeds {args.seeds}; every method with "
        f"the library defaults{changed}; suites (seq len, tokens/domain, oracle grid "
        f"denominator): {suites}"
    )
    results = run_all(specs, args.jobs, report)
    figures = []
    for suite in args.suites.split(","):
        entries = [v for (su, _), v in sorted(results.items()) if su == suite]
        domains = entries[0]["domains"]
        report(f"\n## Suite '{suite}' ({len(entries)} seeds; domains {', '.join(domains)})")
        stats = summarize(report, entries)
        goals(report, suite, stats, domains.index(entries[0]["known"]["noise"]))
        if not args.no_plots:
            figures += plot(suite, entries, _common.HERE)
    if figures:
        report("\nplots: " + ", ".join(f.rsplit("/", 1)[-1] for f in figures))
    _common.finish(report, "quality", "Quality", start, write=args.write)
    return report


if __name__ == "__main__":
    main()
