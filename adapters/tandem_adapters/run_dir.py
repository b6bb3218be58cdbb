"""The run directory: config.toml, mixture.json, metrics.jsonl, mixture.png, checkpoint.npz.

Every file is written atomically (temporary file in the same folder, fsync, rename): an interrupted
run leaves the previous complete version or nothing, never half a file. metrics.jsonl is appended
line by line and, on resume, rewritten from the checkpoint so it never holds rows the resumed run
will write again.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

import tandem_core as tc
from tandem_core.run import RunResult
from tandem_core.state import atomic_write

__all__ = ["MIXTURE_FORMAT", "RunDir", "atomic_write", "read_mixture", "versions"]

MIXTURE_FORMAT = "tandem-mixture"


def versions() -> dict[str, str]:
    """Versions of tandem and of the frameworks that are installed (for mixture.json)."""
    out = {"tandem": tc.__version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "jax", "equinox", "optax", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


class RunDir:
    """One run's output folder.

    Args:
        path: the folder.
        resume: continue the run found there (its checkpoint must exist).
        overwrite: replace a previous run's files instead of refusing.
        read_only: never write (data-parallel ranks other than 0 read the checkpoint only).

    Raises:
        FileExistsError: the folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError: ``resume`` without a checkpoint.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        read_only: bool = False,
    ):
        self.path = Path(path)
        self.read_only = read_only  # data-parallel ranks other than 0: read, never write
        if resume and not self.checkpoint.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.checkpoint}")
        if read_only:
            return
        if not resume and not overwrite and (self.checkpoint.exists() or self.mixture.exists()):
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or --overwrite "
                "to replace it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for f in (self.metrics, self.checkpoint, self.mixture, self.plot):
                f.unlink(missing_ok=True)

    config = property(lambda self: self.path / "config.toml")
    mixture = property(lambda self: self.path / "mixture.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    plot = property(lambda self: self.path / "mixture.png")
    checkpoint = property(lambda self: self.path / "checkpoint.npz")

    def write_config(self, mapping: dict) -> None:
        """The resolved configuration as TOML (``None`` values left out)."""
        if self.read_only:
            return
        atomic_write(self.config, tomli_w.dumps(_drop_none(mapping)))

    def append_metrics(self, row: dict) -> None:
        """Append one JSON line and flush it to disk."""
        if self.read_only:
            return
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl by ``rows`` (resume: the checkpoint's rows)."""
        if self.read_only:
            return
        atomic_write(
            self.metrics, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
        )

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl."""
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def save_checkpoint(self, state: dict, metadata: dict | None = None) -> None:
        """Atomic, checksummed checkpoint (``tandem_core.save_state``)."""
        if self.read_only:
            return
        tc.save_state(self.checkpoint, state, metadata=metadata)

    def load_checkpoint(self) -> tuple[dict, dict]:
        """``(state, metadata)``; a truncated or corrupted file raises ``CorruptStateError``."""
        return tc.load_state(self.checkpoint), tc.read_metadata(self.checkpoint)

    def write_mixture(self, result: RunResult, *, backend: str, extra: dict | None = None) -> Path:
        """mixture.json: average (the default output), last, trajectory, names, method, versions."""
        if self.read_only:
            return self.mixture
        doc = {
            "format": MIXTURE_FORMAT,
            "version": 1,
            "method": result.method,
            "backend": backend,
            "domains": list(result.domains),
            "average": dict(zip(result.domains, map(float, result.average))),
            "last": dict(zip(result.domains, map(float, result.last))),
            "trajectory": np.asarray(result.trajectory, dtype=float).round(8).tolist(),
            "steps": int(result.steps),
            "val_domains": list(result.val_domains),
            "val_loss": None
            if result.val_losses is None
            else dict(zip(result.val_domains, map(float, result.val_losses))),
            "versions": versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        return atomic_write(self.mixture, json.dumps(doc, indent=2, default=_json_default) + "\n")


def read_mixture(path: str | os.PathLike, which: str = "average") -> dict[str, float]:
    """Domain weights from a mixture.json (or a run directory holding one).

    Args:
        path: the file or its run directory.
        which: ``"average"`` (default output) or ``"last"``.

    Returns:
        ``{domain: weight}``, weights summing to 1.

    Raises:
        ValueError: not a tandem mixture file, unknown ``which``, or weights that are not a
            distribution.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "mixture.json"
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if doc.get("format") != MIXTURE_FORMAT:
        raise ValueError(f"{path}: not a tandem mixture file (format {doc.get('format')!r})")
    if which not in ("average", "last"):
        raise ValueError(f"which={which!r}: choose 'average' or 'last'")
    weights = {str(k): float(v) for k, v in doc[which].items()}
    total = sum(weights.values())
    if any(w < 0 for w in weights.values()) or abs(total - 1) > 1e-4:
        raise ValueError(f"{path}: {which} weights are not a distribution (sum {total})")
    return {k: v / total for k, v in weights.items()}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
