"""``tandem prepare DATA``: tokenize a data folder's text into the token cache ahead of time.

A later ``tandem optimize --set data.path=DATA`` with the same tokenizer, ``data.text_field``
and ``data.cache_dir`` then memory-maps the cached tokens instead of tokenizing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from tandem_core import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser("prepare", help="tokenize a data folder's text into the token cache")
    p.add_argument("data", help="a data folder (as data.path) or one text file")
    p.add_argument("--tokenizer", default="", help="a local tokenizer.json (default: byte-level)")
    p.add_argument("--text-field", default="text", help="the JSONL key / column of the text")
    p.add_argument(
        "--cache-dir",
        default="auto",
        help="as data.cache_dir (default: $TANDEM_CACHE or ~/.cache/tandem/tokens)",
    )
    p.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def text_sources(root: Path) -> list[Path]:
    """Every text source under ``root`` in path order (a saved dataset counts as one).

    Hidden files and folders are skipped, as ``load_folder`` skips them.
    """
    from ..data.text import is_hf_dataset_dir, text_kind

    if not root.is_dir() or is_hf_dataset_dir(root):
        return [root] if text_kind(root) is not None else []
    found: list[Path] = []
    for entry in sorted(root.iterdir()):
        if not entry.name.startswith("."):
            found += text_sources(entry)
    return found


def prepare_one(path: str, tokenizer: str, text_field: str, cache_dir: str, progress: bool) -> dict:
    """Tokenize one source into the cache (a worker process): its report (``TokenCache.load``)."""
    from ..data.cache import make_cache
    from ..data.tokenizer import load_tokenizer

    cache = make_cache(
        cache_dir, load_tokenizer(tokenizer or None), text_field=text_field, progress=progress
    )
    assert cache is not None  # run() checked the setting
    _, report = cache.load(Path(path))
    return report


def _table(root: Path, rows: list[tuple[Path, dict]], wall: float) -> str:
    """The report: one line per source, then the totals."""
    names = [str(p.relative_to(root)) if p != root else p.name for p, _ in rows]
    width = max([len(n) for n in names] + [5])
    lines = [f"{'file':<{width}}  {'tokens':>14}  {'seconds':>8}  source"]
    for name, (_, r) in zip(names, rows):
        how = "cache" if r["cached"] else "tokenized"
        lines.append(f"{name:<{width}}  {r['tokens']:>14,}  {r['seconds']:>8.2f}  {how}")
    total = sum(r["tokens"] for _, r in rows)
    new = sum(not r["cached"] for _, r in rows)
    lines.append(f"{'total':<{width}}  {total:>14,}  {wall:>8.2f}  {new} tokenized")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Tokenize every text source of ``args.data`` in a process pool; print the table."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ..data import DataError
    from ..data.cache import resolve_cache_dir
    from ..data.tokenizer import load_tokenizer

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    cache_dir = resolve_cache_dir(args.cache_dir)
    if cache_dir is None:
        raise ConfigError(f"--cache-dir {args.cache_dir!r} turns the cache off: nothing to prepare")
    load_tokenizer(args.tokenizer or None)  # a bad tokenizer fails here, once
    root = Path(args.data)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    sources = text_sources(root)
    if not sources:
        raise DataError(f"{root}: no text files (.txt, .jsonl[.gz|.zst], .parquet, datasets)")
    job: tuple[Any, ...] = (args.tokenizer, args.text_field, str(cache_dir), not args.quiet)
    start = time.perf_counter()
    if args.jobs == 1 or len(sources) == 1:
        reports = [prepare_one(str(p), *job) for p in sources]
    else:  # spawn: no forked copy of a tokenizer's thread pool
        workers = min(args.jobs, len(sources))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(prepare_one, str(p), *job) for p in sources]
            reports = [f.result() for f in futures]
    print(_table(root, list(zip(sources, reports)), time.perf_counter() - start))
    print(f"cache: {cache_dir}")
    return 0
