"""``tandem train``: train a fresh model with a fixed mixture; per-domain validation loss."""

from __future__ import annotations

import argparse

from ._common import add_job_options, launch_if_parallel, load_job


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser("train", help="train with a fixed mixture and report validation loss")
    p.add_argument("--mixture", "-m", help="mixture.json or its run directory (default: uniform)")
    p.add_argument("--which", choices=("average", "last"), default="average")
    add_job_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the job."""
    from ..jobs import rank, train
    from ..run_dir import read_mixture

    weights = read_mixture(args.mixture, args.which) if args.mixture else None
    cfg = load_job(args, "train")
    launched = launch_if_parallel(args, cfg)
    if launched is not None:
        return launched
    print(f"tandem train: {'uniform' if weights is None else args.mixture} -> {cfg.run.run_dir}")
    result = train(cfg, weights, resume=args.resume, overwrite=args.overwrite)
    if rank(cfg) != 0:
        return 0
    print("validation loss per domain:")
    for d, v in zip(result.val_domains, result.val_losses):
        print(f"  {d:<20} {v:.4f}")
    print(f"  {'average':<20} {result.val_losses.mean():.4f}")
    return 0
