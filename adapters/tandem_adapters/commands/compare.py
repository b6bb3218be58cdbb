"""``tandem compare``: learned vs uniform mixture on the same budget (table and bar chart)."""

from __future__ import annotations

import argparse
import math
import sys

from ._common import (
    REUSED,
    add_job_options,
    launch_if_parallel,
    load_job,
    read_mixture_option,
    run_tables,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser("compare", help="train with the learned and the uniform mixture, compare")
    p.add_argument(
        "--mixture",
        "-m",
        required=True,
        help=f"mixture.json or its run directory; its run's config.toml gives the defaults of "
        f"{REUSED} (--config and --set still override them)",
    )
    p.add_argument("--which", choices=("average", "last"), default="average")
    add_job_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run both trainings and print the table."""
    from ..jobs import compare

    weights = read_mixture_option(args.mixture, args.which)
    cfg = load_job(args, "compare", base=run_tables(args.mixture))
    launched = launch_if_parallel(args, cfg)
    if launched is not None:
        return launched
    table = compare(cfg, weights, overwrite=args.overwrite)
    domains = list(table["learned"])
    print(f"{'validation domain':<22}{'learned':>10}{'uniform':>10}{'diff':>10}")
    for d in domains:
        a, b = table["learned"][d], table["uniform"][d]
        print(f"{d:<22}{a:10.4f}{b:10.4f}{a - b:+10.4f}")
    print(f"wrote {cfg.run.run_dir}/compare.json and compare.png")
    pairs = [(n, d, v) for n in ("learned", "uniform") for d, v in table[n].items()]
    bad = [f"{n} {d}" for n, d, v in pairs if not math.isfinite(v)]
    if bad:
        print(
            f"tandem: the run failed: non-finite validation loss ({', '.join(bad)}); its "
            f"outputs in {cfg.run.run_dir} are for diagnosis only",
            file=sys.stderr,
        )
        return 1
    return 0
