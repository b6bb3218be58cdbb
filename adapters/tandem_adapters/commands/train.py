"""``tandem train``: train a fresh model with a fixed mixture; per-domain validation loss.

``--weighting adapt`` adds ADAPT's online per-sample loss weights (docs/methods.md: similarity of
each sample's pooled hidden state to the anchor set, ``--anchor``, default the validation / target
set);
``--weighting bm25`` uses static lexical BM25 scores against the anchors instead.
"""

from __future__ import annotations

import argparse
import json

from ._common import (
    REUSED,
    add_job_options,
    launch_if_parallel,
    load_job,
    read_mixture_option,
    report_problems,
    run_tables,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser("train", help="train with a fixed mixture and report validation loss")
    p.add_argument(
        "--mixture",
        "-m",
        help="mixture.json or its run directory (default: uniform); its run's config.toml gives "
        f"the defaults of {REUSED} (--config and --set still override them)",
    )
    p.add_argument("--which", choices=("average", "last"), default="average")
    p.add_argument(
        "--weighting",
        "-w",
        choices=("none", "adapt", "bm25"),
        help="per-sample loss weights (train.weighting): adapt = ADAPT (model embeddings vs the "
        "anchor centroid), bm25 = ADAPT-BM25 (lexical scores vs the anchors)",
    )
    p.add_argument(
        "--anchor",
        "-a",
        help="ADAPT anchor set: a file or folder read like the training data "
        "(train.adapt_anchor; default: the validation / target set)",
    )
    add_job_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the job."""
    from tandem_core import ConfigError

    from ..jobs import rank, train

    weights = read_mixture_option(args.mixture, args.which) if args.mixture else None
    sets = list(args.set)  # the flags first, so an explicit --set still wins
    if args.anchor:
        sets.insert(0, f"train.adapt_anchor={json.dumps(str(args.anchor))}")
    if args.weighting:
        sets.insert(0, f"train.weighting={json.dumps(args.weighting)}")
    args.set = sets
    cfg = load_job(args, "train", base=run_tables(args.mixture))
    if cfg.train.adapt.adapt_anchor and cfg.train.weighting == "none":
        raise ConfigError("--anchor (train.adapt_anchor) needs --weighting adapt or bm25")
    launched = launch_if_parallel(args, cfg)
    if launched is not None:
        return launched
    what = "uniform" if weights is None else args.mixture
    if cfg.train.weighting != "none":
        what += f" + {cfg.train.weighting} weights (anchor: "
        what += f"{cfg.train.adapt.adapt_anchor or 'validation set'})"
    if rank(cfg) == 0:
        print(f"tandem train: {what} -> {cfg.run.run_dir}")
    result = train(cfg, weights, resume=args.resume, overwrite=args.overwrite)
    if rank(cfg) != 0:
        return 0
    print("validation loss per domain:")
    for d, v in zip(result.val_domains, result.val_losses):
        print(f"  {d:<20} {v:.4f}")
    print(f"  {'average':<20} {result.val_losses.mean():.4f}")
    if result.weighting is not None and "weight_by_domain" in result.weighting:
        kind, mean = result.weighting["kind"], result.weighting["weight_mean"]
        print(f"mean {kind} weight per domain (effective data ratio {mean:.3f}):")
        for d, w in result.weighting["weight_by_domain"].items():
            print(f"  {d:<20} {w:.4f}")
    return report_problems([result], cfg.run.run_dir)
