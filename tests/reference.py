"""Float64 numpy references, written independently of the core's algorithms."""

from __future__ import annotations

import numpy as np


def project_simplex_bisection(v: np.ndarray, floor: float = 0.0, total: float = 1.0) -> np.ndarray:
    """KKT form of the projection: x = max(v - theta, floor), theta bisected on sum(x) = total."""
    v = np.asarray(v, dtype=np.float64)
    lo, hi = v.min() - total - 1.0, v.max() + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, floor).sum() > total:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - 0.5 * (lo + hi), floor)


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
