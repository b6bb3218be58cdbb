"""Plots as PNG (matplotlib, Agg): the mixture trajectory, per-domain losses, comparisons."""

from __future__ import annotations

import io
import os

import numpy as np

from .run_dir import atomic_write

__all__ = ["plot_compare", "plot_run"]


def _figure(ncols: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.8), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def plot_run(result, metrics: list[dict], path: str | os.PathLike) -> None:
    """Three panels: alpha per domain over updates, train loss per domain, validation loss.

    Args:
        result: a ``tandem_core.RunResult`` (its trajectory and domains).
        metrics: the run's metrics rows (``metrics.jsonl``).
        path: the PNG to write.
    """
    plt, fig, (ax_a, ax_t, ax_v) = _figure(3)
    traj = np.asarray(result.trajectory)
    for i, d in enumerate(result.domains):
        if len(traj):
            ax_a.plot(np.arange(1, len(traj) + 1), traj[:, i], label=d)
        else:
            ax_a.axhline(result.average[i], label=d)
    ax_a.set(
        title=f"mixture ({result.method})", xlabel="mixture update", ylabel="alpha", ylim=(0, 1)
    )
    ax_a.legend(fontsize=7)
    for key, ax, title in (
        ("train_loss", ax_t, "train loss (proxy)"),
        ("val_loss", ax_v, "validation loss"),
    ):
        rows = [m for m in metrics if key in m]
        names = sorted({d for m in rows for d in m[key]})
        for d in names:
            pts = [(m["step"], m[key][d]) for m in rows if d in m[key]]
            ax.plot(*zip(*pts), marker="." if key == "val_loss" else None, label=d)
        ax.set(title=title, xlabel="proxy step", ylabel="loss (nats/token)")
        if names:
            ax.legend(fontsize=7)
    _save(plt, fig, path)


def plot_compare(table: dict, path: str | os.PathLike) -> None:
    """Bars of per-validation-domain loss for each mixture in ``table`` (``compare`` output)."""
    names = [k for k in ("learned", "uniform") if k in table]
    domains = list(table[names[0]])
    plt, fig, (ax,) = _figure(1, width=max(5.0, 1.2 * len(domains) + 2))
    x = np.arange(len(domains))
    for i, name in enumerate(names):
        ax.bar(x + (i - 0.5) * 0.38, [table[name][d] for d in domains], 0.38, label=name)
    ax.set_xticks(x, domains)
    ax.set(title="validation loss, same budget", ylabel="loss (nats/token)")
    ax.legend()
    _save(plt, fig, path)


def plot_affinity(
    S,
    names,
    path: str | os.PathLike,
    *,
    weights=None,
    title: str = "task affinity S (TaskPGM)",
) -> None:
    """Heat map of a task affinity matrix, annotated, with the mixture as bars beside it.

    Args:
        S: array ``(N, N)``, e.g. ``1 - D / ln 2`` (1: behaviourally identical tasks).
        names: the N task names.
        path: the PNG to write.
        weights: optional array ``(N,)``, the mixture drawn as a second panel.
        title: the heat map's title.
    """
    S = np.asarray(S, dtype=float)
    n = S.shape[0]
    size = max(4.0, 0.55 * n + 2.5)
    plt, fig, axes = _figure(1 if weights is None else 2, width=size)
    ax = axes[0]
    image = ax.imshow(S, cmap="viridis", vmin=min(0.0, S.min()), vmax=max(1.0, S.max()))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(n), names, rotation=45, ha="right")
    ax.set_yticks(np.arange(n), names)
    if n <= 16:
        mid = 0.5 * (image.norm.vmin + image.norm.vmax)
        for i in range(n):
            for j in range(n):
                color = "black" if S[i, j] > mid else "white"
                ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set(title=title)
    if weights is not None:
        bars = axes[1]
        bars.barh(np.arange(n), np.asarray(weights, dtype=float))
        bars.set_yticks(np.arange(n), names)
        bars.invert_yaxis()
        bars.axvline(1.0 / n, color="gray", linestyle=":", label="uniform")
        bars.set(title="mixture p", xlabel="weight", xlim=(0, 1))
        bars.legend(fontsize=7)
    fig.set_size_inches(size * len(axes), max(3.8, 0.4 * n + 2.0))
    _save(plt, fig, path)
