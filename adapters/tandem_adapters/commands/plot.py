"""``tandem plot RUN_DIR``: (re)draw mixture.png from a run's mixture.json and metrics.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser("plot", help="draw the alpha trajectory and per-domain losses as PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/mixture.png)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Draw the plot."""
    import numpy as np

    from tandem_core.run import RunResult

    from ..plots import plot_run
    from ..run_dir import RunDir

    path = Path(args.run_dir)
    doc = json.loads((path / "mixture.json").read_text())
    domains = tuple(doc["domains"])
    result = RunResult(
        domains=domains,
        method=doc["method"],
        average=np.array([doc["average"][d] for d in domains]),
        last=np.array([doc["last"][d] for d in domains]),
        trajectory=np.asarray(doc["trajectory"], dtype=float).reshape(-1, len(domains)),
        steps=doc["steps"],
    )
    rd = RunDir.__new__(RunDir)
    rd.path = path
    out = args.out or path / "mixture.png"
    plot_run(result, rd.read_metrics(), out)
    print(f"wrote {out}")
    return 0
