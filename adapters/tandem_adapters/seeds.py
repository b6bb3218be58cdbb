"""``tandem optimize --seeds N``: the same job under N seeds, and how far the mixture moves.

Seed k sets ``train.seed`` (the batch order) and ``model.seed`` (the proxy's initialisation) to
the configured values plus k; the data (``data.seed``) stays the same. Each seed is a whole run in
``run_dir/seed-k`` (resumable on its own); ``run_dir/mixture.json`` holds the mean over seeds as
``average`` / ``last`` (the mixture to use) and the per-domain standard deviations under
``seeds``, so a user sees which weights are solid and which are noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tandem_core as tc
from tandem_core.run import RunResult

from .config import JobConfig
from .data import DomainCorpus
from .jobs import _plot, load_corpus, optimize, rank
from .run_dir import RunDir, run_lock

__all__ = ["SeedsResult", "optimize_seeds"]


@dataclass
class SeedsResult:
    """The mean mixture over seeds and its spread (host numpy, ``(M,)`` each)."""

    mean: RunResult  # average / last / trajectory: means over the seeds
    std_average: np.ndarray  # per-domain standard deviation of the averaged mixtures
    std_last: np.ndarray  # per-domain standard deviation of the last mixtures
    runs: list[RunResult]  # one per seed


def optimize_seeds(
    cfg: JobConfig,
    seeds: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable = print,
    corpus: DomainCorpus | None = None,
) -> SeedsResult:
    """Run ``optimize`` under ``seeds`` seeds and summarise them in ``run_dir/mixture.json``.

    With ``resume``, finished seeds are read back from their ``mixture.json``, a stopped one
    resumes from its checkpoint, and the others start. The data is read once (``corpus``: the
    data ``cfg.data`` describes, if the caller has read it already); every seed trains on it.

    Raises:
        ConfigError: ``seeds < 1``.
        FileExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set,
            or another live job holds it (``RunDirLocked``).
    """
    if seeds < 1:
        raise tc.ConfigError(f"--seeds must be >= 1, got {seeds}")
    base = Path(cfg.run.run_dir)
    corpus = load_corpus(cfg.data) if corpus is None else corpus
    # one live job owns run_dir and its seed folders (rank 0 holds the lock; see RunDir)
    with run_lock(base) if rank(cfg) == 0 else contextlib.nullcontext():
        return _seeds(cfg, base, seeds, corpus, resume=resume, overwrite=overwrite, echo=echo)


def _seeds(
    cfg: JobConfig,
    base: Path,
    seeds: int,
    corpus: DomainCorpus,
    *,
    resume: bool,
    overwrite: bool,
    echo: Callable,
) -> SeedsResult:
    if not resume and not overwrite and (base / "mixture.json").exists():
        raise FileExistsError(
            f"{base} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    runs = []
    for k in range(seeds):
        sub = cfg.replace(
            run={"run_dir": str(base / f"seed-{k}")},
            train={"seed": cfg.train.seed + k},
            model={"seed": cfg.model.seed + k},
        )
        echo(f"seed {k + 1}/{seeds}: train.seed={sub.train.seed} model.seed={sub.model.seed}")
        runs.append(_one_seed(sub, corpus, resume=resume, overwrite=overwrite, echo=echo))
    out = _summary(runs)
    if rank(cfg) == 0:
        rd = RunDir(base, overwrite=True)
        rd.write_config(cfg.to_mapping())
        extra = {
            "known_answer": corpus.known_answer,
            "seeds": {
                "n": seeds,
                "train_seeds": [cfg.train.seed + k for k in range(seeds)],
                "model_seeds": [cfg.model.seed + k for k in range(seeds)],
                "std_average": dict(zip(out.mean.domains, map(float, out.std_average))),
                "std_last": dict(zip(out.mean.domains, map(float, out.std_last))),
                "runs": [f"seed-{k}" for k in range(seeds)],
            },
        }
        rd.write_mixture(out.mean, backend=cfg.run.backend, extra=extra)
        _plot(rd, out.mean)
    return out


def _one_seed(
    cfg: JobConfig, corpus: DomainCorpus, *, resume: bool, overwrite: bool, echo: Callable
) -> RunResult:
    path = Path(cfg.run.run_dir)
    if resume and (path / "mixture.json").exists():
        return _read_result(path)  # finished before the stop
    started = resume and (path / "checkpoint.npz").exists()
    return optimize(cfg, resume=started, overwrite=overwrite or resume, echo=echo, corpus=corpus)


def _read_result(path: Path) -> RunResult:
    import json

    doc = json.loads((path / "mixture.json").read_text())
    domains = tuple(doc["domains"])
    val = doc.get("val_loss") or {}
    return RunResult(
        domains=domains,
        method=doc["method"],
        average=np.array([doc["average"][d] for d in domains]),
        last=np.array([doc["last"][d] for d in domains]),
        trajectory=np.asarray(doc["trajectory"], dtype=float).reshape(-1, len(domains)),
        steps=int(doc["steps"]),
        val_domains=tuple(doc.get("val_domains", ())),
        val_losses=np.array(list(val.values())) if val else None,
    )


def _summary(runs: list[RunResult]) -> SeedsResult:
    first = runs[0]
    averages = np.stack([r.average for r in runs])
    lasts = np.stack([r.last for r in runs])
    vals = [r.val_losses for r in runs if r.val_losses is not None]
    mean = RunResult(
        domains=first.domains,
        method=first.method,
        average=averages.mean(0),
        last=lasts.mean(0),
        trajectory=np.mean([r.trajectory for r in runs], axis=0),
        steps=first.steps,
        val_domains=first.val_domains,
        val_losses=np.mean(vals, axis=0) if len(vals) == len(runs) else None,
    )
    return SeedsResult(mean, averages.std(0), lasts.std(0), runs)
