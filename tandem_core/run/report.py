"""What a run reports: metrics rows on logging steps, the progress bar, and the ``RunResult``.

Everything here reads device values on the host, so it runs on logging steps and at the end only
(the loop itself adds no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._transform import MixtureState, mixture_summary
from .._utils import Array, to_numpy
from ..accounting import DomainStats, domain_means

__all__ = ["RunResult", "mixture_row", "postfix", "progress_bar", "run_result"]


@dataclass
class RunResult:
    """What a run produced (host numpy)."""

    domains: tuple[str, ...]
    method: str
    average: np.ndarray  # (M,) time-averaged mixture (the default output)
    last: np.ndarray  # (M,)
    trajectory: np.ndarray  # (T, M) mixture after each update
    steps: int  # proxy optimizer steps taken
    val_domains: tuple[str, ...] = ()
    val_losses: np.ndarray | None = None  # (V,) final proxy loss per validation domain
    metrics: list[dict] = field(default_factory=list)
    weighting: dict | None = None  # per-sample weighting summary (ADAPT): mean weight per domain


def mixture_row(
    domains: tuple[str, ...], acc: DomainStats | None, state: MixtureState, info: dict[str, Array]
) -> dict[str, Any]:
    """The mixture part of a metrics row: train losses since the last row, alpha, diagnostics.

    Args:
        domains: the M domain names.
        acc: per-domain train statistics accumulated since the last logging step (or None).
        state: the mixture state (``alpha (M,)``, counters).
        info: the last measurement's diagnostics (``(M,)`` or ``()`` arrays, e.g. ``delta``).
    """
    row: dict[str, Any] = {}
    if acc is not None:
        means, present = domain_means(acc)
        means, present = to_numpy(means), to_numpy(present)
        row["train_loss"] = {d: float(v) for d, v, p in zip(domains, means, present) if p}
        row["train_loss_avg"] = float(to_numpy(acc.sums).sum() / to_numpy(acc.counts).sum())
    row["alpha"] = dict(zip(domains, map(float, to_numpy(state.alpha))))
    for key, value in info.items():
        value = to_numpy(value)
        row[key] = dict(zip(domains, map(float, value))) if value.ndim else float(value)
    row["mixture_updates"] = int(to_numpy(state.count))
    row["skipped_updates"] = int(to_numpy(state.skipped))
    row["missing"] = dict(zip(domains, map(int, to_numpy(state.missing))))
    return row


def run_result(run: Any, weighting: dict | None) -> RunResult:
    """A ``MixtureRun``'s outputs on the host (float64)."""
    summary = mixture_summary(run.state)
    m = len(run.domains)
    trajectory = (
        np.stack([to_numpy(a) for a in run.trajectory]) if run.trajectory else np.zeros((0, m))
    )
    val = next((row["val_loss"] for row in reversed(run.metrics) if "val_loss" in row), None)
    return RunResult(
        domains=run.domains,
        method=run.config.method,
        average=to_numpy(summary.average).astype(np.float64),
        last=to_numpy(summary.last).astype(np.float64),
        trajectory=trajectory.astype(np.float64),
        steps=run.proxy_step,
        val_domains=tuple(run.sampler.val_domains),
        val_losses=None if val is None else np.array(list(val.values())),
        metrics=list(run.metrics),
        weighting=weighting,
    )


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar over proxy steps (terminals only), or ``None``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: a bar on terminals only (no megabytes of carriage returns in CI logs)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)


def postfix(row: dict) -> str:
    """The bar's text: episode, loss, the three heaviest domains, the mean sample weight."""
    top = sorted(row["alpha"].items(), key=lambda kv: -kv[1])[:3]
    parts = [f"loss={row.get('train_loss_avg', float('nan')):.3f}"]
    if "episode" in row:
        parts.insert(0, f"ep={row['episode']}")
    parts.append(" ".join(f"{d}={w:.2f}" for d, w in top))
    if "weights" in row:
        parts.append(f"w={row['weights']['mean']:.2f}")
    return " ".join(parts)
