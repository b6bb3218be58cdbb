"""``tandem bench``: one TANDEM task on JAX (jit), torch eager and torch.compile, side by side."""

from __future__ import annotations

import argparse
import json
import os

from ._common import add_config_options

DEFAULT_ENGINES = "jax,torch,torch-compile"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser(
        "bench", help="compare the backends on one task: steps/s, tokens/s, memory, compile time"
    )
    add_config_options(p, "[data] [model] [train]", "--set model.d_model=32")
    p.add_argument(
        "--engines",
        default=None,
        help=f"comma-separated, from jax, torch, torch-compile, jax-fused, torch-fused "
        f"(default {DEFAULT_ENGINES}, those whose backend is installed)",
    )
    p.add_argument("--episodes", type=int, default=2, help="episodes per engine per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of both backends (sets OMP_NUM_THREADS / XLA_FLAGS if unset; 0: leave)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--json", help="also write the table rows to this JSON file")
    p.set_defaults(run=run)


def set_threads(threads: int) -> None:
    """One CPU thread (or ``threads``) for torch, OpenMP and XLA; before jax is imported."""
    if threads <= 0:
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ.setdefault("XLA_FLAGS", flags)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def _installed(backend: str) -> bool:
    from tandem_core import load_backend

    try:
        load_backend(backend)
    except (ImportError, ValueError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Time the engines and print the table."""
    set_threads(args.threads)
    from tandem_core import ConfigError
    from tandem_core.state import atomic_write

    from ..bench import BACKEND_COLUMNS, ENGINES, compare_backends, format_table, machine_info
    from ..config import JobConfig

    engines = [e.strip() for e in (args.engines or DEFAULT_ENGINES).split(",") if e.strip()]
    if args.engines is None:
        engines = [e for e in engines if _installed(ENGINES[e][0])]
    if not engines or args.episodes < 1 or args.rounds < 1:
        raise ConfigError("bench needs at least one engine, --episodes >= 1 and --rounds >= 1")
    cfg = JobConfig.load(args.config, args.set)
    t, p = cfg.train, cfg.train.params
    print(
        f"tandem bench: suite={cfg.data.suite} model d={cfg.model.d_model} L={cfg.model.n_layer} "
        f"seq={cfg.data.seq_len} batch={t.batch_per_domain}/domain K={p.probe_steps} "
        f"E={p.free_steps} seed={cfg.data.seed}; {args.rounds} rounds x {args.episodes} episodes"
    )
    rows, _ = compare_backends(
        cfg,
        engines,
        episodes=args.episodes,
        rounds=args.rounds,
        echo=print,
        memory=not args.no_memory,
    )
    backends = sorted({ENGINES[e][0] for e in engines})
    for key, value in machine_info(backends).items():
        print(f"  {key}: {value}")
    print(format_table(rows, BACKEND_COLUMNS))
    worst = max(r["alpha_diff"] for r in rows)
    print(
        f"steps/s: proxy optimizer steps (episodes of K probe + E free steps, sync and mixture "
        f"update included); median of {args.rounds} rounds; max |alpha - alpha_{engines[0]}| "
        f"after the same episodes: {worst:.1e}"
    )
    if args.json:
        atomic_write(args.json, json.dumps(rows, indent=2))
    return 0
