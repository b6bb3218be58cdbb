"""Tokenize once: the first ``load_corpus`` of a text folder (tokenizes, fills the cache) vs the
second (memory-maps the cache). Every figure is measured in this run.

The folder (``--mb`` MB of JSONL and text over four domains, one gzip-compressed) is generated
into a temporary directory, with the cache, and removed at the end. The check: the first
``TokenSampler`` batches of both loads are bit-identical. Goal: second load >= 20x faster.
Usage:

    python benchmarks/text_cache.py [--mb 200] [--tokenizer tokenizer.json] [--write]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import _common
import numpy as np
from _common import Report

from tandem_adapters.config import DataConfig
from tandem_adapters.data import TokenSampler
from tandem_adapters.data.cache import content_hash
from tandem_adapters.jobs import load_corpus

WORDS = "the of and to in is was for on that with as by at from data model mixture token".split()


def _documents(n_bytes: int, seed: int) -> list[str]:
    """Random word documents of 200-2000 bytes, about ``n_bytes`` in all."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_bytes:
        words = rng.choice(WORDS, size=int(rng.integers(40, 400)))
        docs.append(" ".join(words))
        total += len(docs[-1]) + 1
    return docs


def make_folder(root: Path, mb: float) -> Path:
    """Four domains of ``mb / 4`` MB each: .txt, .jsonl, .jsonl.gz, a sub-folder of .jsonl."""
    data = root / "data"
    (data / "forum").mkdir(parents=True)
    share = int(mb * 1e6 / 4)
    (data / "web.txt").write_text("\n".join(_documents(share, 0)) + "\n")
    lines = "".join(json.dumps({"text": d}) + "\n" for d in _documents(share, 1))
    (data / "code.jsonl").write_text(lines)
    with gzip.open(data / "books.jsonl.gz", "wt", compresslevel=1) as f:
        f.write("".join(json.dumps({"text": d}) + "\n" for d in _documents(share, 2)))
    docs = _documents(share, 3)
    for k in range(2):
        part = docs[k::2]
        (data / "forum" / f"part{k}.jsonl").write_text(
            "".join(json.dumps({"text": d}) + "\n" for d in part)
        )
    return data


def first_batches(corpus, n: int = 4) -> bytes:
    """Digest of the first ``n`` training batches of a seeded ``TokenSampler``."""
    sampler = TokenSampler(corpus, seq_len=256, seed=0)
    h = hashlib.sha256()
    for _ in range(n):
        h.update(sampler.train_batch(per_domain=8)["tokens"].tobytes())
    return h.digest()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=200.0, help="size of the generated text folder")
    p.add_argument("--tokenizer", default="", help="a local tokenizer.json (default: bytes)")
    p.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    report, begin = Report(), time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="tandem-text-cache-"))
    try:
        start = time.perf_counter()
        data = make_folder(root, args.mb)
        size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        report(f"generated {size / 1e6:.0f} MB of text in {time.perf_counter() - start:.1f} s")
        cfg = DataConfig(path=str(data), cache_dir=str(root / "cache"), tokenizer=args.tokenizer)
        t0 = time.perf_counter()
        first = load_corpus(cfg, progress=False)
        t1 = time.perf_counter()
        second = load_corpus(cfg, progress=False)
        t2 = time.perf_counter()
        hashing = time.perf_counter()
        for f in data.rglob("*"):
            if f.is_file():
                content_hash(f)
        hashing = time.perf_counter() - hashing
        same = first_batches(first) == first_batches(second)
        tokens = sum(s.shape[0] for s in first.train)
        result = {
            "mb": round(size / 1e6, 1),
            "tokens": int(tokens),
            "first_s": round(t1 - t0, 2),
            "second_s": round(t2 - t1, 3),
            "hash_s": round(hashing, 3),
            "speedup": round((t1 - t0) / (t2 - t1), 1),
            "identical_batches": same,
        }
        report(f"first load (tokenize + fill cache): {result['first_s']:.2f} s, {tokens:,} tokens")
        report(f"second load (from cache):          {result['second_s']:.3f} s")
        report(f"  of which content hashing:        {result['hash_s']:.3f} s")
        report(f"first batches of both loads bit-identical: {same}")
        report.goal("second load >= 20x faster", result["speedup"] >= 20, f"{result['speedup']}x")
        if not same:
            raise SystemExit("the cached corpus gives other batches")
        _common.finish(report, "text_cache", "Text tokenized once", begin, write=args.write)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
