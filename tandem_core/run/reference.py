"""The mixture a reference model trains on (docs/methods.md, "DoReMi: Update").

A plan with a reference model names its mixture: ``"uniform"``, ``"natural"`` (tokens per
domain, the sampler's ``domain_sizes()``), or a file of weights: a ``mixture.json`` written by a
run (its ``average``), a folder holding one, a JSON list (one weight per domain, in the
sampler's order) or a JSON object ``{domain: weight}`` naming every domain. Weights are finite,
``>= 0`` and not all 0; they are normalised here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["reference_weights"]

MIXTURE_FORMAT = "tandem-mixture"  # the "format" of a run's mixture.json


def reference_weights(
    spec: str, domains: Sequence[str], sizes: Sequence[float] | None = None
) -> np.ndarray:
    """The reference mixture ``(M,)`` float64 (summing to 1) that ``spec`` names.

    Args:
        spec: ``"uniform"``, ``"natural"`` or the path of a weights file (see the module).
        domains: the run's training domains, in the sampler's order.
        sizes: training tokens per domain (``"natural"`` reads them).

    Raises:
        ConfigError: an unreadable or malformed file (the message names it and the problem),
            weights that do not cover the domains, or ``"natural"`` without sizes.
    """
    m = len(domains)
    if spec == "uniform":
        return np.full(m, 1.0 / m)
    if spec == "natural":
        if sizes is None:
            raise ConfigError("reference_mixture='natural' needs the sampler's domain_sizes()")
        tokens = [float(n) for n in sizes]
        return _normalised(tokens, "reference_mixture='natural' (tokens per domain)")
    return _normalised(_read(Path(spec), list(domains)), f"reference_mixture file {spec}")


def _read(path: Path, domains: list[str]) -> list[Any]:
    """The weights a file holds, one per domain in ``domains``' order (not yet checked)."""
    if path.is_dir():
        path = path / "mixture.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"reference_mixture file {path} not found (or use 'natural' / 'uniform')"
        ) from None
    except OSError as err:
        raise ConfigError(f"reference_mixture file {path}: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"reference_mixture file {path}: not valid JSON ({err})") from None
    if isinstance(doc, dict) and doc.get("format") == MIXTURE_FORMAT:
        doc = doc.get("average")
        if not isinstance(doc, dict):
            raise ConfigError(f"reference_mixture file {path}: a mixture.json without 'average'")
    if isinstance(doc, list):
        if len(doc) != len(domains):
            raise ConfigError(
                f"reference_mixture file {path}: {len(doc)} weights for {len(domains)} domains "
                f"{domains}"
            )
        return doc
    if isinstance(doc, dict):
        missing = [d for d in domains if d not in doc]
        unknown = sorted(str(k) for k in doc if k not in domains)
        if missing or unknown:
            raise ConfigError(
                f"reference_mixture file {path}: weights must name exactly the domains "
                f"{domains} (missing {missing}, unknown {unknown})"
            )
        return [doc[d] for d in domains]
    raise ConfigError(
        f"reference_mixture file {path}: expected a mixture.json, a JSON list or a "
        f"{{domain: weight}} object, got {type(doc).__name__}"
    )


def _normalised(weights: list[Any], what: str) -> np.ndarray:
    numeric = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    if not weights or not numeric:
        raise ConfigError(f"{what}: weights must be numbers, got {weights}")
    values = [float(w) for w in weights]
    if any(not 0 <= w < math.inf for w in values) or not sum(values) > 0:
        raise ConfigError(f"{what}: weights must be finite, >= 0 and not all 0, got {values}")
    out = np.asarray(values, dtype=np.float64)
    return out / out.sum()
