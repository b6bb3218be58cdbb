"""Experiment trackers: the metrics rows of a run sent to TensorBoard or Weights & Biases.

``run.report_to = ["tensorboard", "wandb"]`` names them. Each tracker gets the rows that
metrics.jsonl gets (every ``train.log_every`` proxy steps), flattened to scalars
(``alpha/<domain>``, ``train_loss/<domain>``, ``val_loss/<domain>``, ``delta/<domain>``,
``nonfinite``, ...), and at the end the run's mixture.json (wandb: an artifact; TensorBoard: a
text summary). Only rank 0 reports: the jobs build trackers where the run directory is writable.

From the Python API, ``make_trackers`` returns a callable usable as ``MixtureRun``'s callback::

    trackers = make_trackers(["tensorboard"], "runs/mine")
    run = MixtureRun(engine, sampler, cfg, callback=trackers)
    result = run.run()
    trackers.finish("runs/mine/mixture.json")  # or finish(None): close without a mixture

A resumed run continues the same tracker run: TensorBoard appends event files to ``run_dir/tb``,
wandb resumes the run whose id is kept in ``run_dir/wandb_id.txt``.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tandem_core import ConfigError

__all__ = [
    "TRACKERS",
    "TensorBoardTracker",
    "Tracker",
    "Trackers",
    "WandbTracker",
    "flatten",
    "make_trackers",
]

# the names `run.report_to` accepts; each is also the pip extra that installs it
TRACKERS = ("tensorboard", "wandb")
# row entries that are positions, not measurements: the step is the tracker's own x axis
_SKIP = ("step",)


class Tracker(Protocol):
    """Where a run's metrics go besides metrics.jsonl."""

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Record one metrics row (a logging step) at proxy step ``step``."""

    def finish(self, mixture_path: str | os.PathLike | None) -> None:
        """Attach the final mixture.json (``None``: the run ended without one) and close."""


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics row as ``{"alpha/web": 0.3, "nonfinite": 0.0, ...}``.

    Nested per-domain dicts become ``<key>/<domain>``; strings, ``None`` and the step are left
    out. Non-finite values are kept (a diverging run should show them).
    """
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}/"))
        elif isinstance(value, (bool, int, float)) and name not in _SKIP:
            out[name] = float(value)
    return out


def mixture_markdown(doc: Mapping[str, Any]) -> str:
    """A mixture.json as a Markdown table (domain | average | last) for a text summary."""
    names = doc.get("domains", [])
    average, last = doc.get("average", {}), doc.get("last", {})
    lines = [f"method: {doc.get('method', '?')}", ""]
    lines += ["| domain | average | last |", "|---|---|---|"]
    for d in names:
        lines.append(f"| {d} | {_num(average, d)} | {_num(last, d)} |")
    return "\n".join(lines)


def _num(weights: Any, domain: str) -> str:
    value = weights.get(domain) if isinstance(weights, Mapping) else None
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


class TensorBoardTracker:
    """Scalars in ``run_dir/tb`` (``torch.utils.tensorboard``, else ``tensorboardX``).

    The writer opens at the first row, so building the tracker only checks the package; a
    resumed run adds a new event file to the same folder, which TensorBoard reads as one run.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self._make = _summary_writer()  # fails now, before any work, when nothing is installed
        self.log_dir = Path(run_dir) / "tb"
        self._writer: Any = None

    def _open(self, step: int | None = None) -> Any:
        if self._writer is None:
            # a resumed run re-logs the steps after its checkpoint: hide the old file's copies
            purge = step if step is not None and self.log_dir.exists() else None
            self._writer = self._make(log_dir=str(self.log_dir), purge_step=purge)
        return self._writer

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Write each number of ``row`` as a scalar; flushed so a killed run keeps its rows."""
        writer = self._open(step)
        for key, value in flatten(row).items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def finish(self, mixture_path: str | os.PathLike | None) -> None:
        """The mixture as a text summary (tag ``mixture``), then close the writer."""
        if mixture_path is not None and Path(mixture_path).exists():
            doc = json.loads(Path(mixture_path).read_text())
            self._open().add_text("mixture", mixture_markdown(doc))
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbTracker:
    """A wandb run in ``run_dir`` (mode from ``WANDB_MODE``; project ``WANDB_PROJECT`` or tandem).

    The run id is kept in ``run_dir/wandb_id.txt``, so a resumed job continues the same wandb run
    (``resume="allow"``). The mixture.json is logged as an artifact of type ``mixture``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        *,
        resume: bool = True,
    ) -> None:
        self._wandb = _require("wandb")
        self.resume = resume  # False (--overwrite): a new wandb run even when an id is saved
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self._run: Any = None

    def _open(self) -> Any:
        if self._run is None:
            wandb = self._wandb
            self.run_dir.mkdir(parents=True, exist_ok=True)
            id_file = self.run_dir / "wandb_id.txt"
            saved = self.resume and id_file.exists()
            run_id = id_file.read_text().strip() if saved else uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
            self._run = wandb.init(
                dir=str(self.run_dir),
                id=run_id,
                resume="allow",
                project=os.environ.get("WANDB_PROJECT", "tandem"),
                name=self.run_dir.name,
                config=self.config,
            )
        return self._run

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Log the numbers of ``row`` at ``step`` (wandb drops steps below a resumed run's)."""
        self._open().log(flatten(row), step=step)

    def finish(self, mixture_path: str | os.PathLike | None) -> None:
        """Log mixture.json as an artifact (and its weights in the summary), then finish."""
        if mixture_path is not None and Path(mixture_path).exists():
            run = self._open()
            doc = json.loads(Path(mixture_path).read_text())
            for which in ("average", "last"):
                for d, w in (doc.get(which) or {}).items():
                    run.summary[f"mixture/{which}/{d}"] = w
            artifact = self._wandb.Artifact(f"mixture-{run.id}", type="mixture")
            artifact.add_file(str(mixture_path))
            run.log_artifact(artifact)
        if self._run is not None:
            self._run.finish()
            self._run = None


class Trackers:
    """Several trackers as one: a ``MixtureRun`` callback (``trackers(row)``) and a ``Tracker``.

    ``then`` is called first with each row (the jobs pass metrics.jsonl's writer).
    """

    def __init__(self, trackers: Iterable[Tracker], then: Callable[[dict], None] | None = None):
        self.trackers, self.then = list(trackers), then

    def __call__(self, row: dict) -> None:
        """The callback: ``then(row)``, then each tracker at ``row["step"]``."""
        if self.then is not None:
            self.then(row)
        self.log(row, int(row.get("step", 0)))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """Send ``row`` to every tracker."""
        for tracker in self.trackers:
            tracker.log(row, step)

    def finish(self, mixture_path: str | os.PathLike | None) -> None:
        """Finish every tracker (``mixture_path``: the final mixture.json, or ``None``)."""
        for tracker in self.trackers:
            tracker.finish(mixture_path)


def make_trackers(
    names: Iterable[str],
    run_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    *,
    then: Callable[[dict], None] | None = None,
    resume: bool = True,
) -> Trackers:
    """The trackers ``names`` (``run.report_to``) for a run in ``run_dir``.

    Args:
        names: tracker names from ``TRACKERS``.
        run_dir: the run directory (TensorBoard: ``run_dir/tb``; wandb: ``run_dir/wandb``).
        config: the job's ``{table: {key: value}}`` (wandb's run config).
        then: called with each row before the trackers (e.g. ``RunDir.append_metrics``).
        resume: continue the wandb run whose id ``run_dir`` keeps (False: start a new one).

    Raises:
        ConfigError: an unknown name, or its package is not installed (names the pip extra).
    """
    out = []
    for name in names:
        check_name(name)
        out.append(_FACTORIES[name](run_dir, config, resume))
    return Trackers(out, then=then)


_FACTORIES: dict[str, Callable[..., Tracker]] = {
    "tensorboard": lambda run_dir, config, resume: TensorBoardTracker(run_dir),
    "wandb": lambda run_dir, config, resume: WandbTracker(run_dir, config, resume=resume),
}


def check_name(name: str) -> None:
    """``ConfigError`` naming ``run.report_to`` unless ``name`` is a tracker installed here.

    Only looks the packages up (no import), so a config is checked in milliseconds.
    """
    from importlib.util import find_spec

    if name not in TRACKERS:
        raise ConfigError(f"run.report_to: {name!r} is not one of {TRACKERS}")
    found = find_spec(name) is not None
    if name == "tensorboard":  # torch's writer needs the tensorboard package; tensorboardX not
        found = (found and find_spec("torch") is not None) or find_spec("tensorboardX") is not None
    if not found:
        raise ConfigError(_missing(name))


def _missing(name: str) -> str:
    return f"run.report_to={name!r} needs the {name} package: pip install 'tandem-mixture[{name}]'"


def _require(name: str) -> Any:
    """Import a tracker's package; a missing one is a one-line ``ConfigError``."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(_missing(name)) from None


def _summary_writer() -> Callable[..., Any]:
    """A ``SummaryWriter`` class: torch's (needs the tensorboard package), else tensorboardX's."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    try:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    except ImportError:
        raise ConfigError(_missing("tensorboard")) from None
