"""Checkpoint formats on 2 ranks: save / load time and peak memory per rank, sharded vs npz.

Two gloo ranks on this machine train the tiny GPT (``--d-model``, ``--n-layer``; float32,
AdamW) under FSDP for two proxy steps, so both twins and both optimizer states exist, sharded.
Then each format saves the whole run state and loads it back into a fresh run of the same
layout, timed on every rank (the slowest rank's time is the job's):

- ``npz``: every rank gathers the full twins (``full_tensor``), rank 0 writes one checksummed
  ``checkpoint.npz`` (the default format; the one that moves between backends);
- ``sharded``: ``torch.distributed.checkpoint``, each rank writes its own shards
  (``backend.checkpoint = "sharded"``).

With ``--jax``, JAX rows (``_checkpoint_jax.py``) do the same on 2 JAX processes
(``jax.distributed``, one CPU device each): npz vs orbax shards. Off by default: the JAX twins
are replicated, so each process holds the whole state (about 2 GB of float32 arrays at the
default size, both twins and their AdamW moments) and the save's copies on top.

Peak memory is the resident memory above its level before the save, sampled every 1 ms
(``tandem_adapters.bench.peak_rss_during``), next to the rank's own shard: the bytes of its
local parameter and optimizer-state shards of both twins. Goal: during a sharded save a rank
holds at most 1.2x its shard (the shard plus at most 20% more), where npz gathers the whole
model. Usage:

    python benchmarks/checkpoint.py [--d-model 768 --n-layer 12] [--jax] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import _checkpoint_jax
import _common
from _common import Report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(args: argparse.Namespace, root: Path, fmt: str):
    from tandem_adapters.config import JobConfig

    return JobConfig.from_mapping(
        {
            "run": {"backend": "torch", "progress": False, "run_dir": str(root / "run")},
            "backend": {"threads": 1, "fsdp": True, "checkpoint": fmt},
            "data": {"suite": "planted", "seq_len": args.seq_len},
            "model": {"d_model": args.d_model, "n_layer": args.n_layer, "n_head": args.n_head},
            "train": {"steps": 100, "batch_per_domain": 1, "val_batch_size": 2, "log_every": 100},
        }
    )


def _shard_bytes(twins) -> int:
    """This rank's bytes of both twins' parameters and optimizer states (local shards)."""
    from tandem_torch.distributed import local

    total = 0
    for module, opt in ((twins.proxy, twins.opt_proxy), (twins.reference, twins.opt_reference)):
        for p in module.parameters():
            total += local(p).numel() * p.element_size()
            for value in opt.state.get(p, {}).values():
                if hasattr(value, "numel") and value.dim() > 0:
                    total += local(value).numel() * value.element_size()
    return total


def _same_shards(a, b) -> bool:
    """Both runs' twins hold bit-identical local parameter shards."""
    import torch

    from tandem_torch.distributed import local

    pairs = zip(
        [*a.twins.proxy.parameters(), *a.twins.reference.parameters()],
        [*b.twins.proxy.parameters(), *b.twins.reference.parameters()],
    )
    return all(torch.equal(local(x.detach()), local(y.detach())) for x, y in pairs)


def _one_format(fmt: str, rank: int, root: Path, args: argparse.Namespace) -> dict:
    """Train 2 steps, save in ``fmt`` (timed, peak RSS), load into a fresh run (timed)."""
    import numpy as np
    import torch.distributed as dist

    import tandem_core as tc
    from tandem_adapters.bench import peak_rss_during
    from tandem_adapters.jobs import build_run, load_corpus
    from tandem_core._utils import to_numpy

    cfg = _config(args, root, fmt)
    corpus = load_corpus(cfg.data, progress=False)
    run = build_run(cfg, corpus)
    while run.proxy_step < 2:  # the optimizer moments exist
        run.step()
    where, timing = root / fmt, {}
    where.mkdir(exist_ok=True)

    def save() -> None:
        dist.barrier()
        start = time.perf_counter()
        if fmt == "sharded":
            run.engine.save_sharded(where, run.state_dict(), step=run.proxy_step)
        else:
            state = run.state_dict()  # every rank gathers the full twins
            if rank == 0:
                tc.save_state(where / "checkpoint.npz", state)
        dist.barrier()
        timing["save"] = time.perf_counter() - start

    peak = peak_rss_during(save)
    fresh = build_run(cfg, corpus)
    dist.barrier()
    start = time.perf_counter()
    if fmt == "sharded":
        state, _ = fresh.engine.load_sharded(where)
    else:
        state = tc.load_state(where / "checkpoint.npz")
    fresh.load_state_dict(state)
    dist.barrier()
    load_s = time.perf_counter() - start
    alpha = np.array_equal(to_numpy(fresh.state.alpha), to_numpy(run.state.alpha))
    return {
        "format": fmt,
        "rank": rank,
        "params": sum(p.numel() for p in run.engine.twins.proxy.parameters()),
        "shard_mib": _shard_bytes(run.engine.twins) / 2**20,
        "peak_mib": peak,
        "save_s": timing["save"],
        "load_s": load_s,
        "disk_mib": sum(f.stat().st_size for f in where.rglob("*") if f.is_file()) / 2**20,
        "same": bool(alpha and _same_shards(run.engine, fresh.engine)),
    }


def _rank_main(rank: int, world: int, port: int, out: str, args: argparse.Namespace) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    import torch.distributed as dist

    root = Path(out).parent
    rows = [_one_format(fmt, rank, root, args) for fmt in ("npz", "sharded")]
    got = [None] * world
    dist.all_gather_object(got, rows)
    if rank == 0:
        Path(out).write_text(json.dumps([r for part in got for r in part]))
    dist.barrier()
    dist.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)  # no gloo teardown at exit (pytorch#179291)


def measure(args: argparse.Namespace) -> list[dict]:
    """Rows ``{format, rank, params, shard_mib, peak_mib, save_s, load_s, disk_mib, same}``."""
    import torch.multiprocessing as mp

    root = Path(tempfile.mkdtemp(prefix="tandem-ckpt-bench-"))
    try:
        out = root / "rows.json"
        mp.spawn(_rank_main, args=(2, _free_port(), str(out), args), nprocs=2, join=True)
        rows = json.loads(out.read_text())
        if args.jax:
            rows += _checkpoint_jax.measure(args, root, __file__)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--jax", action="store_true", help="also 2 JAX processes: npz vs orbax")
    p.add_argument("--jax-worker", metavar="OUT", help=argparse.SUPPRESS)  # one JAX process
    p.add_argument("--write", action="store_true", help="update RESULTS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    from tandem_adapters.bench import format_table

    args = parse(argv)
    _common.setup_env()
    if args.jax_worker:
        _checkpoint_jax.worker(args.jax_worker, args)
        return Report()
    start = time.perf_counter()
    report = Report()
    rows = measure(args)
    p = rows[0]["params"]
    setup = (
        f"setup: tiny GPT d={args.d_model} L={args.n_layer} heads={args.n_head}, {p / 1e6:.1f}M "
        "float32 parameters per twin, AdamW (two twins, two optimizer states), FSDP over 2 gloo "
        "ranks on this machine, torch; after 2 proxy steps"
    )
    if args.jax:
        setup += "; jax: 2 processes (jax.distributed), one CPU device each, twins replicated"
    report(setup)
    for r in rows:
        r["ratio"] = (r["shard_mib"] + r["peak_mib"]) / r["shard_mib"]
    cols = [
        ("format", "format", ""),
        ("rank", "rank", ""),
        ("shard_mib", "rank's shard MiB", ".0f"),
        ("peak_mib", "peak RSS +MiB (save)", ".0f"),
        ("ratio", "peak held / shard", ".2f"),
        ("save_s", "save s", ".2f"),
        ("load_s", "load s", ".2f"),
        ("disk_mib", "on disk MiB", ".0f"),
        ("same", "resumed state equal", ""),
    ]
    report(format_table(rows, cols))
    report(
        "peak RSS +MiB: resident memory above its level before the save (both twins' state "
        "gathered for npz); peak held / shard: (shard + that peak) / shard; save / load s: "
        "wall time of the slowest rank between barriers; "
        "load = the format's read plus MixtureRun.load_state_dict into a fresh run"
    )
    by = {(r["format"], r["rank"]): r for r in rows}
    worst = max(by[("sharded", k)]["ratio"] for k in (0, 1))  # torch FSDP: sharded twins
    report.goal(
        "sharded save: peak memory per rank <= 1.2x the rank's shard",
        worst <= 1.2,
        f"worst rank {worst:.2f}x (npz: {max(by[('npz', k)]['ratio'] for k in (0, 1)):.2f}x)",
    )
    report.goal(
        "both formats resume the same state",
        all(r["same"] for r in rows),
        ", ".join(f"{r['format']}/{r['rank']}: {r['same']}" for r in rows),
    )
    _common.finish(report, "checkpoint", "Checkpoints", start, write=args.write)
    return report


if __name__ == "__main__":
    main()
