"""Float64 numpy references, written independently of the core's algorithms."""

from __future__ import annotations

import numpy as np


def project_simplex_bisection(v: np.ndarray, floor: float = 0.0, total: float = 1.0) -> np.ndarray:
    """KKT form of the projection: x = max(v - theta, floor), theta bisected on sum(x) = total.

    Python floats after the shift by the max (exact for huge inputs: theta lies within
    ``[max - total, max]``, and coordinates further below the max are ``floor``).
    """
    v = [float(x) for x in np.asarray(v, dtype=np.float64)]
    top = max(v)
    # v_i - top in exact rational arithmetic would be ideal; clamping far coordinates (which
    # project to the floor whatever their value) keeps the difference finite
    w = [x - top if x >= top - total - 1.0 else -total - 1.0 for x in v]
    lo, hi = -total - 1.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if sum(max(x - mid, floor) for x in w) > total:
            lo = mid
        else:
            hi = mid
    theta = 0.5 * (lo + hi)
    return np.array([max(x - theta, floor) for x in w])


def project_simplex_grid(v: np.ndarray, steps: int = 400) -> np.ndarray:
    """Brute force for M = 3: the closest grid point of the simplex to v (resolution 1/steps)."""
    best, best_d = None, np.inf
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            x = np.array([i, j, steps - i - j], dtype=np.float64) / steps
            d = np.sum((x - v) ** 2)
            if d < best_d:
                best, best_d = x, d
    return best


def eg_reference(alpha: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
    z = np.asarray(alpha, np.float64) * np.exp(-lr * np.asarray(grad, np.float64))
    return z / z.sum()


def segment_sum_loop(values, ids, m):
    out = [0.0] * m
    for v, i in zip(values, ids):
        out[int(i)] += float(v)
    return np.array(out)


def simplex_errors(alpha: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``alpha (..., M)`` in float64: ``|sum - 1|`` and ``floor - min`` (<= 0: fine)."""
    a = np.asarray(alpha, dtype=np.float64)
    return np.abs(a.sum(-1) - 1.0), floor - a.min(-1)
