"""The JAX rows of benchmarks/checkpoint.py: npz vs orbax shards on 2 JAX processes.

Two processes joined by ``jax.distributed`` on 127.0.0.1 (one CPU device each, one ``data``
mesh over both) train the same tiny GPT as the torch rows for two proxy steps, then each format
saves the run state and loads it into a fresh run, timed on every process between barriers:

- ``npz``: every process reads the replicated twins to the host; process 0 writes one file;
- ``sharded``: orbax (``backend.checkpoint = "sharded"``): every process writes what it holds.

The JAX engine replicates the twins over the mesh (data parallel, no parameter sharding), so a
process's "shard" is the whole state here and orbax writes one replica of each array.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(args: argparse.Namespace, root: Path, fmt: str):
    from tandem_adapters.config import JobConfig

    return JobConfig.from_mapping(
        {
            "run": {"backend": "jax", "progress": False, "run_dir": str(root / "run")},
            "backend": {"distributed": True, "checkpoint": fmt},
            "data": {"suite": "planted", "seq_len": args.seq_len},
            "model": {"d_model": args.d_model, "n_layer": args.n_layer, "n_head": args.n_head},
            "train": {"steps": 100, "batch_per_domain": 2, "val_batch_size": 2, "log_every": 100},
        }
    )


def _leaves(engine) -> list:
    import jax

    t = engine.twins
    return jax.tree.leaves((t.proxy, t.reference, t.opt_proxy, t.opt_reference))


def _one_format(fmt: str, root: Path, args: argparse.Namespace) -> dict:
    """Train 2 steps, save in ``fmt`` (timed, peak RSS), load into a fresh run (timed)."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    import tandem_core as tc
    from tandem_adapters.bench import peak_rss_during
    from tandem_adapters.jobs import build_run, load_corpus

    cfg = _config(args, root, fmt)
    corpus = load_corpus(cfg.data, progress=False)
    run = build_run(cfg, corpus)  # joins the job before anything starts JAX
    rank = jax.process_index()
    while run.proxy_step < 2:  # the optimizer moments exist
        run.step()
    where, timing = root / f"jax-{fmt}", {}
    where.mkdir(exist_ok=True)

    def barrier() -> None:
        multihost_utils.sync_global_devices(f"bench-{fmt}")

    def save() -> None:
        barrier()
        start = time.perf_counter()
        if fmt == "sharded":
            run.engine.save_sharded(where, run.state_dict(), step=run.proxy_step)
        else:
            state = run.state_dict()  # every process reads the replicated twins
            if rank == 0:
                tc.save_state(where / "checkpoint.npz", state)
        barrier()
        timing["save"] = time.perf_counter() - start

    peak = peak_rss_during(save)
    fresh = build_run(cfg, corpus)
    barrier()
    start = time.perf_counter()
    if fmt == "sharded":
        state, _ = fresh.engine.load_sharded(where)
    else:
        state = tc.load_state(where / "checkpoint.npz")
    fresh.load_state_dict(state)
    jax.block_until_ready(fresh.engine.twins)
    barrier()
    load_s = time.perf_counter() - start
    held = sum(s.data.nbytes for a in _leaves(run.engine) for s in a.addressable_shards)
    pairs = zip(_leaves(run.engine), _leaves(fresh.engine))
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    same = same and np.array_equal(np.asarray(run.state.alpha), np.asarray(fresh.state.alpha))
    return {
        "format": f"jax {fmt}",
        "rank": rank,
        "params": sum(a.size for a in jax.tree.leaves(run.engine.twins.proxy)),
        "shard_mib": held / 2**20,
        "peak_mib": peak,
        "save_s": timing["save"],
        "load_s": load_s,
        "disk_mib": sum(f.stat().st_size for f in where.rglob("*") if f.is_file()) / 2**20,
        "same": bool(same),
    }


def worker(out: str, args: argparse.Namespace) -> None:
    """One process of the JAX pair (``JAX_*`` set by ``measure``): its rows to ``out``."""
    import orbax.checkpoint  # noqa: F401  (imported once per process, not inside a timing)

    root = Path(out).parent
    rows = [_one_format(fmt, root, args) for fmt in ("npz", "sharded")]
    Path(out).write_text(json.dumps(rows))


def measure(args: argparse.Namespace, root: Path, script: str) -> list[dict]:
    """Rows of both JAX processes (``script --jax-worker OUT`` runs ``worker``)."""
    port, procs = _free_port(), []
    flags = ["--d-model", "--n-layer", "--n-head", "--seq-len"]
    values = [args.d_model, args.n_layer, args.n_head, args.seq_len]
    shape = [str(x) for pair in zip(flags, values) for x in pair]
    for i in range(2):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
        }
        cmd = [sys.executable, script, "--jax-worker", str(root / f"jax{i}.json"), *shape]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode:
            raise RuntimeError(f"JAX checkpoint worker failed:\n{err[-3000:]}")
    return [row for i in range(2) for row in json.loads((root / f"jax{i}.json").read_text())]
