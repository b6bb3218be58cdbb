"""Data at scale: loading a sharded token corpus and drawing batches, measured in this run.

A synthetic corpus of uint16 nanoGPT ``.bin`` shards over 8 domains is written to a temporary
folder (removed at the end), then for each size: the time to ``load_corpus`` plus the first
batch, RssAnon (``/proc/self/status``) before and after, and the sampler's training rows per
second next to the rows per second the default proxy consumes, measured in this run: the
default job (library defaults, torch) on the planted suite, proxy steps x
``train.batch_per_domain`` x M rows over its wall time. Rows are the unit because both sides cut
rows of the same T (``data.seq_len``, the default unless ``--seq-len``). Usage:

    python benchmarks/data.py [--gb 0.5 8] [--shards 64] [--seq-len T] [--write]

Each size needs that much free disk under the temporary folder (``df -h /tmp``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
from _common import Report

DOMAINS = 8
WRITE_TOKENS = 1 << 24  # ids written per chunk, so writing never holds a whole shard


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (heap, not the page cache of mapped files)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kb / 1024


def write_corpus(root: Path, gb: float, shards: int, vocab: int = 50_257) -> int:
    """``shards`` uint16 ``.bin`` files spread over ``DOMAINS`` sub-folders; returns the tokens."""
    per_shard = int(gb * 2**30 / 2 / shards)
    rng = np.random.default_rng(0)
    for s in range(shards):
        folder = root / f"domain{s % DOMAINS}"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"shard{s:04d}.bin", "wb") as f:
            for start in range(0, per_shard, WRITE_TOKENS):
                n = min(WRITE_TOKENS, per_shard - start)
                f.write(rng.integers(0, vocab, n, dtype=np.uint16).tobytes())
    return per_shard * shards


def proxy_rows_per_s(seq_len: int, steps: int = 100) -> float:
    """Training rows per second the default job's proxy consumes (torch, planted suite)."""
    from tandem_adapters.data import TokenSampler, make_suite
    from tandem_core.backend import training_backend
    from tandem_core.run import MixtureRun, ModelSpec, TrainConfig

    backend = training_backend("torch")
    options = backend.Options()
    backend.setup(options)
    corpus = make_suite("planted")
    cfg = TrainConfig.from_mapping({"steps": steps})
    model = backend.build_model(ModelSpec(), vocab_size=corpus.vocab_size, seq_len=seq_len)
    engine = backend.make_engine(
        model,
        cfg,
        num_domains=corpus.num_domains,
        num_val_domains=len(corpus.val_domains),
        options=options,
    )
    run = MixtureRun(engine, TokenSampler(corpus, seq_len), cfg)
    start = time.perf_counter()
    run.run(progress=False)
    elapsed = time.perf_counter() - start
    return steps * cfg.batch_per_domain * corpus.num_domains / elapsed


def measure(root: Path, args: argparse.Namespace) -> dict:
    """Load time, first-batch time, RssAnon growth and sampler tokens/s over ``root``."""
    from tandem_adapters.config import DataConfig
    from tandem_adapters.data import TokenSampler
    from tandem_adapters.jobs import load_corpus
    from tandem_core.run import TrainConfig

    per_domain = TrainConfig().batch_per_domain  # the default job's rows per domain and step
    before = rss_anon_mb()
    start = time.perf_counter()
    corpus = load_corpus(DataConfig(path=str(root), seq_len=args.seq_len))
    loaded = time.perf_counter() - start
    sampler = TokenSampler(corpus, args.seq_len, seed=0)
    sampler.train_batch(per_domain)
    first = time.perf_counter() - start
    after = rss_anon_mb()
    rows_per_batch = per_domain * corpus.num_domains
    times = _common.timed(lambda: sampler.train_batch(per_domain), repeat=args.repeat)
    return {
        "tokens": sum(len(s) for s in corpus.train),
        "load_s": loaded,
        "first_batch_s": first,
        "rss_before": before,
        "rss_after": after,
        "sampler_rows_s": rows_per_batch / _common.med(times),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gb", type=float, nargs="+", default=[0.5, 8.0], help="corpus sizes (GB)")
    p.add_argument("--shards", type=int, default=64, help="shard files per corpus")
    p.add_argument("--seq-len", type=int, default=0, help="T of the rows (0: data.seq_len)")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    p.add_argument("--repeat", type=int, default=20, help="timed train batches")
    p.add_argument("--dir", default=None, help="where to write the corpus (default: $TMPDIR)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Report:
    """Run every size and print the table with the goals."""
    from tandem_adapters.config import DataConfig

    start = time.perf_counter()
    args = parse(argv)
    args.seq_len = args.seq_len or DataConfig().seq_len
    _common.setup_env()
    report = Report()
    report(f"sharded uint16 .bin corpus, {DOMAINS} domains, T={args.seq_len}")
    head = "| GB | shards | tokens | load s | load+1st batch s | RssAnon MB before -> after |"
    report(head + " sampler rows/s | sampler / proxy |")
    report("|---" * 8 + "|")
    rows = []
    for gb in args.gb:  # before torch is imported: RssAnon is the data's, not a model's
        root = Path(tempfile.mkdtemp(prefix="tandem-data-bench-", dir=args.dir))
        try:
            write_corpus(root, gb, args.shards)
            rows.append((gb, measure(root, args)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    proxy = proxy_rows_per_s(args.seq_len)
    for gb, r in rows:
        report(
            f"| {gb:g} | {args.shards} | {r['tokens']:.3g} | {r['load_s']:.2f} | "
            f"{r['first_batch_s']:.2f} | {r['rss_before']:.0f} -> {r['rss_after']:.0f} | "
            f"{r['sampler_rows_s']:.3g} | {r['sampler_rows_s'] / proxy:.1f}x |"
        )
    report(f"default proxy (torch, planted suite, library defaults): {proxy:.0f} rows/s")
    gb, big = max(rows, key=lambda x: x[0])
    report()
    report.goal(
        f"{gb:g} GB: load + first batch < 2 s",
        big["first_batch_s"] < 2.0,
        f"{big['first_batch_s']:.2f} s",
    )
    report.goal(
        f"{gb:g} GB: anonymous memory < 200 MB",
        big["rss_after"] < 200,
        f"RssAnon {big['rss_after']:.0f} MB (grew {big['rss_after'] - big['rss_before']:.0f} MB)",
    )
    slowest = min(r["sampler_rows_s"] for _, r in rows) / proxy
    report.goal("sampler >= 10x the default proxy", slowest >= 10, f"slowest size: {slowest:.1f}x")
    _common.finish(report, "data", "Data at scale", start, write=args.write)
    return report


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
