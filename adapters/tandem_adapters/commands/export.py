"""``tandem export RUN_DIR --to FORMAT``: the learned mixture for another training stack.

See docs/export.md for every format. Errors are one line: exit 2 for bad options (a
``ConfigError``), exit 1 for a missing or broken run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tandem_core import ConfigError

WHICH = ("average", "last", "schedule")
_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    from ..export import FORMATS, MAX_EPOCHS

    p = sub.add_parser("export", help="write the learned mixture for HF, Megatron, OLMo, ...")
    p.add_argument("run_dir", help="a run directory (holding mixture.json)")
    p.add_argument("--to", required=True, metavar="FORMAT", help=" | ".join(FORMATS))
    p.add_argument("--which", default="average", help="average (default) | last | schedule")
    p.add_argument(
        "--paths",
        nargs="+",
        action="extend",
        default=[],
        metavar="DOMAIN=PATH",
        help="each domain's data path (default: the run's data folder entries)",
    )
    p.add_argument("--paths-file", help="a .json, .yaml or .toml mapping domain -> path")
    p.add_argument(
        "--tokens-per-example",
        nargs="+",
        action="extend",
        default=[],
        metavar="DOMAIN=N",
        help="mean tokens per example where the run does not know it (hf, --per-example)",
    )
    p.add_argument(
        "--per-example", action="store_true", help="example shares instead of token shares"
    )
    p.add_argument("--budget", help="training tokens (e.g. 2e9, 300B): print each domain's epochs")
    p.add_argument(
        "--max-epochs",
        type=float,
        default=MAX_EPOCHS,
        help=f"warn when --budget repeats a domain more often (default {MAX_EPOCHS:g})",
    )
    p.add_argument("--train-steps", type=int, help="schedule: your run's steps")
    p.add_argument("--stages", type=int, default=10, help="schedule: at most this many (10)")
    p.add_argument("--step-multiple", type=int, default=1, help="schedule: round stage starts")
    p.add_argument("-o", "--output", help="write here, atomically (default: stdout)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the run, convert, write the text; warnings go to stderr."""
    from .. import export as ex
    from ..run_dir import read_mixture

    fmt = _check_options(args)
    doc, path = _read_run(Path(args.run_dir))
    domains = list(doc["domains"])
    stats = doc.get("domain_stats") or {}
    staged = None
    if args.which == "schedule":
        steps = args.train_steps or int(doc.get("steps") or 0)
        if steps < 1:
            raise ConfigError("--which schedule: the run records no steps; pass --train-steps N")
        traj = np.asarray(doc.get("trajectory") or [], dtype=float)
        if traj.size == 0:
            raise ConfigError("--which schedule: the run recorded no mixture updates")
        staged = ex.stages(
            traj, domains, steps=steps, count=args.stages, multiple=args.step_multiple
        )
        weights = _trajectory_mean(traj, domains)
    else:
        weights = _read(read_mixture, path, args.which)
    if fmt == "hf" or args.per_example:
        tpe = _tokens_per_example(args, domains, stats)
        weights = ex.per_example(weights, tpe)
        if staged is not None:
            staged = [(s, ex.per_example(w, tpe)) for s, w in staged]
    budget, repeats = _budget(args, weights, stats)
    needs_paths = fmt not in ("json", "yaml")  # plain weights: the consumer knows its data
    paths = _paths(args, domains, _read_config(path)) if needs_paths else {}
    text = ex.to_format(fmt, weights, paths, staged=staged, budget=budget, repeats=repeats)
    if args.output:
        from tandem_core.state import atomic_write

        atomic_write(Path(args.output), text)
        _warn(f"wrote {args.output}", prefix="")
    else:
        sys.stdout.write(text)
    return 0


def _check_options(args: argparse.Namespace) -> str:
    """The format, after every option that needs no file is checked (``ConfigError``)."""
    from ..export import FORMATS, STAGED

    fmt = args.to.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--to {args.to!r}: choose one of {', '.join(FORMATS)}")
    if args.which not in WHICH:
        raise ConfigError(f"--which {args.which!r}: choose one of {', '.join(WHICH)}")
    if args.which == "schedule" and fmt not in STAGED:
        raise ConfigError(
            f"--which schedule: {fmt} takes one fixed mixture; staged weights: {', '.join(STAGED)}"
        )
    for name in ("stages", "step_multiple", "train_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.max_epochs <= 0:
        raise ConfigError(f"--max-epochs must be > 0, got {args.max_epochs}")
    return fmt


def _read_run(path: Path) -> tuple[dict, Path]:
    """mixture.json's document; ``FileNotFoundError`` / ``DataError`` (exit 1) when unusable."""
    from ..data import DataError
    from ..run_dir import MIXTURE_FORMAT

    file = path / "mixture.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no mixture.json (is {path} a finished tandem run?)")
    try:
        doc = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("format") != MIXTURE_FORMAT:
        raise DataError(f"{file}: not a tandem mixture file")
    if not isinstance(doc.get("domains"), list) or not doc["domains"]:
        raise DataError(f"{file}: no domains")
    return doc, file


def _read(read_mixture, path: Path, which: str) -> dict[str, float]:
    """``read_mixture``; a broken file is a ``DataError`` (exit 1)."""
    from ..data import DataError

    try:
        return read_mixture(path, which)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: no usable {which!r} weights ({err})") from None


def _trajectory_mean(traj: np.ndarray, domains: list[str]) -> dict[str, float]:
    mean = traj.reshape(-1, len(domains)).mean(axis=0)
    return dict(zip(domains, map(float, mean / mean.sum())))


def _read_config(mixture: Path) -> dict:
    """The run's config.toml (empty when absent: paths then fall back to domain names)."""
    import tomllib

    file = mixture.parent / "config.toml"
    if not file.is_file():
        return {}
    try:
        with open(file, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        from ..data import DataError

        raise DataError(f"{file}: not valid TOML ({err})") from None


def _pairs(items: list[str], option: str, domains: list[str]) -> dict[str, str]:
    """``DOMAIN=VALUE`` items; an unknown domain or a missing ``=`` is a ``ConfigError``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"{option} {item!r}: expected DOMAIN=VALUE")
        out[name] = value
    _known(out, option, domains)
    return out


def _known(mapping: dict, option: str, domains: list[str]) -> None:
    unknown = [d for d in mapping if d not in domains]
    if unknown:
        raise ConfigError(
            f"{option}: unknown domain {', '.join(map(repr, unknown))}; the run's domains: "
            f"{', '.join(domains)}"
        )


def _paths(args: argparse.Namespace, domains: list[str], config: dict) -> dict[str, str]:
    """Each domain's path: --paths, else --paths-file, else the data folder, else its name."""
    given = _paths_file(args.paths_file, domains) if args.paths_file else {}
    given.update(_pairs(args.paths, "--paths", domains))
    found = _folder_paths(config.get("data", {}).get("path", ""))
    out, missing = {}, []
    for d in domains:
        out[d] = given.get(d) or found.get(d) or d
        if d not in given and d not in found:
            missing.append(d)
    if missing:
        _warn(
            f"no data path for {', '.join(missing)}: written as the domain name; "
            "pass --paths DOMAIN=PATH or --paths-file"
        )
    return out


def _paths_file(file: str, domains: list[str]) -> dict[str, str]:
    """A mapping domain -> path read from .json, .yaml / .yml or .toml (``ConfigError``)."""
    path = Path(file)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"--paths-file {file}: {err.strerror or err}") from None
    try:
        if path.suffix == ".json":
            mapping = json.loads(text)
        elif path.suffix == ".toml":
            import tomllib

            mapping = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("--paths-file: a .yaml file needs PyYAML") from None
            mapping = yaml.safe_load(text)
        else:
            raise ConfigError(f"--paths-file {file}: use a .json, .yaml or .toml file")
    except ConfigError:
        raise
    except Exception as err:  # each parser has its own error class
        raise ConfigError(f"--paths-file {file}: cannot parse ({err})") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ConfigError(f"--paths-file {file}: expected a mapping of domain -> path string")
    _known(mapping, "--paths-file", domains)
    return {str(k): v for k, v in mapping.items()}


def _folder_paths(folder: str) -> dict[str, str]:
    """Domain -> entry of the run's data folder (as the reader names them: folder or stem)."""
    from ..data.text import domain_stem

    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        return {}
    out = {}
    for entry in sorted(root.iterdir()):
        name = entry.name if entry.is_dir() else domain_stem(entry)
        out.setdefault(name, str(entry.resolve()))
    return out


def _tokens_per_example(
    args: argparse.Namespace, domains: list[str], stats: dict
) -> dict[str, float]:
    """Mean tokens per example: --tokens-per-example, else the run's domain_stats."""
    given = _pairs(args.tokens_per_example, "--tokens-per-example", domains)
    out, missing = {}, []
    for d in domains:
        if d in given:
            out[d] = _positive(given[d], f"--tokens-per-example {d}")
        elif (stats.get(d) or {}).get("examples"):
            out[d] = stats[d]["tokens"] / stats[d]["examples"]
        else:
            missing.append(d)
    if missing:
        raise ConfigError(
            "example shares need each domain's mean tokens per example; the run does not "
            f"record it for {', '.join(missing)}: pass --tokens-per-example DOMAIN=N"
        )
    return out


def _budget(
    args: argparse.Namespace, weights: dict[str, float], stats: dict
) -> tuple[int | None, dict[str, float] | None]:
    """``(budget, epochs)`` for --budget (printed to stderr, with a warning above the limit)."""
    from ..export import epochs

    if args.budget is None:
        return None, None
    budget = int(_positive(args.budget, "--budget"))
    unknown = [d for d in weights if not (stats.get(d) or {}).get("tokens")]
    if unknown:
        raise ConfigError(
            f"--budget: the run records no token count for {', '.join(unknown)} "
            "(mixture.json from before domain_stats): run tandem optimize again"
        )
    if args.per_example or args.to.lower() == "hf":
        # the epochs are about tokens: convert the example shares back
        tpe = {d: stats[d]["tokens"] / max(stats[d].get("examples") or 1, 1) for d in weights}
        total = sum(weights[d] * tpe[d] for d in weights)
        token_weights = {d: weights[d] * tpe[d] / total for d in weights}
    else:
        token_weights = weights
    reps = epochs(token_weights, {d: stats[d]["tokens"] for d in weights}, budget)
    print(f"{'domain':<24}{'weight':>10}{'tokens':>16}{'epochs':>10}", file=sys.stderr)
    for d, e in reps.items():
        print(f"{d:<24}{token_weights[d]:10.4f}{stats[d]['tokens']:16d}{e:10.2f}", file=sys.stderr)
    over = [f"{d} ({e:.1f})" for d, e in reps.items() if e > args.max_epochs]
    if over:
        _warn(
            f"at {budget} tokens these domains repeat more than {args.max_epochs:g} epochs: "
            f"{', '.join(over)}; more data or a lower weight avoids the overfitting"
        )
    return budget, reps


def _positive(value: str, option: str) -> float:
    """A positive number, with an optional K / M / B / T suffix (``2e9``, ``300B``)."""
    text = str(value).strip()
    scale = _SUFFIX.get(text[-1:].upper(), 1.0)
    try:
        number = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a number") from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{option}: must be > 0, got {value!r}")
    return number


def _warn(message: str, prefix: str = "warning: ") -> None:
    print(f"tandem: {prefix}{message}", file=sys.stderr)
