"""``tandem optimize``: learn a mixture (the main job)."""

from __future__ import annotations

import argparse

import numpy as np

from ._common import (
    add_job_options,
    known_answer_notes,
    launch_if_parallel,
    load_job,
    mixture_table,
    report_problems,
    verdict,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser(
        "optimize",
        help="learn a mixture (default: TANDEM on the built-in planted suite)",
        description="Learn per-domain mixture weights. With no arguments: TANDEM on the built-in "
        "synthetic suite, on CPU, printing the learned mixture next to the known answer.",
        epilog="Every key of the tables, its default and a line of help: tandem config "
        "[-c FILE] [--set ...] (e.g. --set train.method=doge for that method's keys).",
    )
    add_job_options(p)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="run N seeds (train.seed and model.seed + 0..N-1, in run_dir/seed-k) and report "
        "the mean mixture with its per-domain standard deviation",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the job and print the mixture."""
    from ..jobs import load_corpus, optimize, rank

    if args.seeds < 1:
        from tandem_core import ConfigError

        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = load_job(args, cfg_kind(args))
    launched = launch_if_parallel(args, cfg)
    if launched is not None:
        return launched
    corpus = load_corpus(cfg.data, progress=cfg.run.progress)  # read once: job and report
    seeds = f", {args.seeds} seeds" if args.seeds > 1 else ""
    if rank(cfg) == 0:
        print(
            f"tandem optimize: method={cfg.train.method} backend={cfg.run.backend}{seeds} -> "
            f"{cfg.run.run_dir}"
        )
    if args.seeds > 1:
        from ..seeds import optimize_seeds

        out = optimize_seeds(
            cfg, args.seeds, resume=args.resume, overwrite=args.overwrite, corpus=corpus
        )
        result, runs = out.mean, out.runs
        columns = {"average": result.average, "± std": out.std_average, "last": result.last}
    else:
        result = optimize(cfg, resume=args.resume, overwrite=args.overwrite, corpus=corpus)
        runs = [result]
        columns = {"average": result.average, "last": result.last}
    if rank(cfg) != 0:
        return 0
    known = corpus.known_answer
    columns["uniform"] = np.full(len(result.domains), 1 / len(result.domains))
    print(mixture_table(result.domains, columns, known_answer_notes(known)))
    for line in verdict(result.domains, result.average, known):
        print(line)
    if result.val_losses is not None and len(result.val_domains):
        vals = ", ".join(f"{d}={v:.4f}" for d, v in zip(result.val_domains, result.val_losses))
        print(f"proxy validation loss: {vals}")
    what = f"mean over {args.seeds} seeds, " if args.seeds > 1 else ""
    print(f"wrote {cfg.run.run_dir}/mixture.json ({what}average = the mixture to use), mixture.png")
    return report_problems(runs, cfg.run.run_dir, vocab_size=corpus.vocab_size)


def cfg_kind(args: argparse.Namespace) -> str:
    """The run-dir label: the method."""
    for item in args.set:
        if item.startswith("train.method="):
            return item.split("=", 1)[1].strip().strip('"')
    return "optimize"
