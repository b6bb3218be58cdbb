"""Options and output shared by the job subcommands."""

from __future__ import annotations

import argparse
import datetime

import numpy as np

from ..config import JobConfig


def add_config_options(
    parser: argparse.ArgumentParser,
    tables: str = "[run] [data] [model] [train] [backend]",
    example: str = "--set train.steps=300 --set run.backend=jax",
) -> None:
    """--config FILE / --set TABLE.KEY=VALUE (repeatable)."""
    parser.add_argument("--config", "-c", help=f"TOML file with {tables} tables")
    parser.add_argument(
        "--set",
        "-s",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help=f"override one setting, e.g. {example}",
    )


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """--config / --set / --resume / --overwrite / --quiet."""
    add_config_options(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in run.run_dir")
    parser.add_argument("--overwrite", action="store_true", help="replace a run in run.run_dir")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="data-parallel processes (backend.nproc; torch: runs torchrun)",
    )


def launch_if_parallel(args: argparse.Namespace, cfg: JobConfig) -> int | None:
    """Re-run this command in several processes when the backend's options ask for it.

    Returns:
        The exit status of the parallel job, or ``None`` when this process should run the job.
    """
    from tandem_core.backend import training_backend

    backend = training_backend(cfg.run.backend)
    return backend.launch(list(args.argv), cfg.backend, run_dir=cfg.run.run_dir)


def load_job(args: argparse.Namespace, kind: str) -> JobConfig:
    """The job's configuration; an unset run_dir becomes runs/<data>-<kind>-<time>."""
    cfg = JobConfig.load(args.config, args.set)
    if args.nproc is not None:
        cfg = cfg.replace(backend={"nproc": args.nproc})
    if args.quiet:
        cfg = cfg.replace(run={"progress": False})
    explicit = any(o.split("=", 1)[0].strip() == "run.run_dir" for o in args.set)
    if not explicit and (args.config is None or "run_dir" not in _run_table(args.config)):
        if args.resume:
            raise SystemExit("--resume needs the run directory: --set run.run_dir=PATH")
        name = cfg.data.suite if not (cfg.data.path or cfg.data.hf_dataset) else "data"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg = cfg.replace(run={"run_dir": f"runs/{name}-{kind}-{stamp}"})
    return cfg


def _run_table(path: str) -> dict:
    import tomllib

    with open(path, "rb") as f:
        return tomllib.load(f).get("run", {})


def mixture_table(
    domains, columns: dict[str, np.ndarray], notes: dict[str, str] | None = None
) -> str:
    """A plain-text table: one row per domain, one column per mixture (plus a note column)."""
    names = list(columns)
    width = max(len(d) for d in domains) + 2
    head = "domain".ljust(width) + "".join(n.rjust(10) for n in names)
    if notes:
        head += "  expected"
    lines = [head, "-" * len(head)]
    for i, d in enumerate(domains):
        row = d.ljust(width) + "".join(f"{columns[n][i]:10.3f}" for n in names)
        if notes:
            row += "  " + notes.get(d, "")
        lines.append(row)
    return "\n".join(lines)


def known_answer_notes(known: dict | None) -> dict[str, str]:
    """``{domain: "up" | "down" | "neutral"}`` from a synthetic suite's known answer."""
    if not known:
        return {}
    notes = {}
    for key in ("up", "down", "neutral"):
        for d in known.get(key, []):
            notes[d] = {"up": "up (useful)", "down": "down (harmful)", "neutral": "-"}[key]
    return notes


def verdict(domains, alpha: np.ndarray, known: dict | None) -> list[str]:
    """Checks of a learned mixture against a known answer (below/above the uniform share)."""
    if not known:
        return []
    share = 1.0 / len(domains)
    index = {d: i for i, d in enumerate(domains)}
    out = []
    for d in known.get("down", []):
        ok = alpha[index[d]] < share
        sign = "<" if ok else ">="
        out.append(f"[{'ok' if ok else 'MISS'}] {d}: {alpha[index[d]]:.3f} {sign} {share:.3f}")
    up = [d for d in known.get("up", []) if d in index]
    if up:
        total = sum(alpha[index[d]] for d in up)
        ok = total > share * len(up)
        sign, names = (">" if ok else "<="), "+".join(up)
        out.append(f"[{'ok' if ok else 'MISS'}] {names}: {total:.3f} {sign} {share * len(up):.3f}")
    return out
