"""Options and output shared by the job subcommands."""

from __future__ import annotations

import argparse
import datetime
import math

import numpy as np

from tandem_core import ConfigError

from ..config import JobConfig, check_run_dir


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


def load_job(args: argparse.Namespace, kind: str, base: dict | None = None) -> JobConfig:
    """The job's configuration; an unset run_dir becomes runs/<data>-<kind>-<time>.

    ``base``: tables that ``--config`` and ``--set`` override (``run_tables``).
    """
    cfg = JobConfig.load(args.config, args.set, base=base)
    if args.nproc is not None:
        cfg = cfg.replace(backend={"nproc": args.nproc})
    if args.quiet:
        cfg = cfg.replace(run={"progress": False})
    explicit = any(o.split("=", 1)[0].strip() == "run.run_dir" for o in args.set)
    if not explicit and (args.config is None or "run_dir" not in _run_table(args.config)):
        if args.resume:
            raise ConfigError("--resume needs the run directory: --set run.run_dir=PATH")
        name = cfg.data.suite if not (cfg.data.path or cfg.data.hf_dataset) else "data"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg = cfg.replace(run={"run_dir": f"runs/{name}-{kind}-{stamp}"})
    args.run_dir = cfg.run.run_dir  # named by the CLI's one-line error for a failed write
    check_run_dir(cfg.run.run_dir)  # a file, under a file, not writable: before any work
    return cfg


# what `--mixture RUN` reuses of that run's config.toml: its data, model and backend
REUSED = "[data], [model] and run.backend"


def run_tables(mixture: str | None) -> dict | None:
    """The [data] and [model] tables and run.backend of the run that wrote ``mixture``.

    ``mixture``: a mixture.json or its run directory; ``None`` when it has no config.toml beside.
    """
    from pathlib import Path

    import tomllib

    if mixture is None:
        return None
    folder = Path(mixture) if Path(mixture).is_dir() else Path(mixture).parent
    try:
        tables = tomllib.loads((folder / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # a bare mixture.json: the user gives the data
    out = {k: dict(tables[k]) for k in ("data", "model") if isinstance(tables.get(k), dict)}
    backend = tables.get("run", {}).get("backend") if isinstance(tables.get("run"), dict) else None
    if backend is not None:
        out["run"] = {"backend": backend}
    return out


def _run_table(path: str) -> dict:
    import tomllib

    with open(path, "rb") as f:  # JobConfig.load has checked the file
        return tomllib.load(f).get("run", {})


def read_mixture_option(path: str, which: str) -> dict[str, float]:
    """``--mixture``'s weights; ``ConfigError`` (exit 2) naming the file when it is unusable."""
    from ..run_dir import read_mixture

    try:
        return read_mixture(path, which)
    except ValueError as err:  # names the file
        raise ConfigError(f"--mixture: {err}") from None
    except OSError as err:
        raise ConfigError(f"--mixture {err.filename or path}: {err.strerror or err}") from None
    except (KeyError, TypeError, AttributeError):  # valid JSON, another layout
        raise ConfigError(f"--mixture {path}: no {which!r} weights (not a mixture.json)") from None


# known-answer checks: a weight must clear the uniform share by this much to be an [ok]
MARGIN = 0.005
# a run fails when more than this share of its proxy steps had a non-finite loss
MAX_NONFINITE = 0.5
# ... or when its last training loss exceeds this multiple of a uniform guess's, ln(V)
DIVERGED = 2.0


def run_problems(result, vocab_size: int | None = None) -> list[str]:
    """Why a finished run learned nothing usable (empty when it is fine).

    Reads the engine counters of the last metrics row: non-finite steps (more than
    ``MAX_NONFINITE`` of the proxy steps), for a method that learns its mixture the number of
    mixture updates (none: the mixture is still the initial one), and, given ``vocab_size``,
    the last training loss: above ``DIVERGED * ln(vocab_size)`` (far worse than a uniform
    guess) the proxy diverged, even when every loss stayed finite.
    """
    from tandem_core.methods import Signal, get_method

    if not result.metrics:  # read back from mixture.json (--seeds --resume): no counters
        return []
    last, steps = result.metrics[-1], max(int(result.steps), 1)
    out = []
    loss = last.get("train_loss_avg")
    if (
        vocab_size
        and vocab_size > 1
        and loss is not None
        and loss > DIVERGED * math.log(vocab_size)
    ):
        out.append(
            f"the proxy diverged: its last training loss {loss:.4g} is far above a uniform "
            f"guess's ln({vocab_size}) = {math.log(vocab_size):.3f}; lower train.lr"
        )
    nonfinite = int(last.get("nonfinite", 0))
    if nonfinite > MAX_NONFINITE * steps:
        out.append(
            f"{nonfinite} of {steps} proxy steps had a non-finite loss (first at step "
            f"{last.get('first_nonfinite')}); lower train.lr or check the data"
        )
    learned = get_method(result.method).signal is not Signal.NONE
    if learned and int(last.get("mixture_updates", 1)) == 0:
        skipped = int(last.get("skipped_updates", 0))
        why = f" ({skipped} skipped: non-finite signal)" if skipped else ""
        out.append(f"no mixture update was applied{why}: the mixture is the initial one")
    return out


def report_problems(results, run_dir: str, vocab_size: int | None = None) -> int:
    """Print each run's problems as one line on stderr; returns the exit status (0 or 1)."""
    import sys

    problems = [p for r in results for p in run_problems(r, vocab_size)]
    if not problems:
        return 0
    print(
        f"tandem: the run failed: {'; '.join(problems)}. Its outputs are in {run_dir} "
        "(for diagnosis only: metrics.jsonl has the per-step losses)",
        file=sys.stderr,
    )
    return 1


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
    """Checks of a learned mixture against a known answer (below/above the uniform share).

    A check is ``[ok]`` only when the weight clears the uniform share by ``MARGIN``: a
    mixture that stayed uniform (up to rounding) is a ``[MISS]``.
    """
    if not known:
        return []
    share = 1.0 / len(domains)
    index = {d: i for i, d in enumerate(domains)}
    out = [_check(d, alpha[index[d]], share, below=True) for d in known.get("down", [])]
    up = [d for d in known.get("up", []) if d in index]
    if up:
        total = sum(alpha[index[d]] for d in up)
        out.append(_check("+".join(up), total, share * len(up), below=False))
    return out


def _check(name: str, value: float, bound: float, *, below: bool) -> str:
    ok = value < bound - MARGIN if below else value > bound + MARGIN
    if ok:
        return f"[ok] {name}: {value:.3f} {'<' if below else '>'} {bound:.3f}"
    if (value < bound) if below else (value > bound):  # the right side, by less than MARGIN
        return f"[MISS] {name}: {value:.3f} is within {MARGIN} of {bound:.3f}"
    return f"[MISS] {name}: {value:.3f} {'>=' if below else '<='} {bound:.3f}"
