"""The probability simplex: projection (with floor), exponentiated gradient, smoothing, averages.

Every function is batched over leading axes; the simplex axis is the last one (size ``M``).
"""

from __future__ import annotations

from typing import Any

from ._utils import Array, namespace

__all__ = ["eg_step", "project_simplex", "running_mean", "smooth", "time_average"]


def _check_floor(floor: Any, total: Any, num: int) -> None:
    if isinstance(floor, (int, float)) and isinstance(total, (int, float)):
        if floor < 0:
            raise ValueError(f"floor must be >= 0, got {floor}")
        if floor > 0 and num * floor >= total:
            raise ValueError(
                f"floor={floor} is infeasible for M={num} domains: M * floor = {num * floor} must "
                f"be < {total}; use floor < {total / num}"
            )


def project_simplex(
    v: Array, floor: float | Array = 0.0, *, total: float | Array = 1.0, mask: Array | None = None
) -> Array:
    """Euclidean projection onto ``{x : x_m >= floor, sum_m x_m = total}`` (Duchi et al. 2008).

    Sort-based. With a floor, ``v - floor`` is projected onto the simplex of mass
    ``total - M * floor`` and the floor added back. The threshold is
    ``theta = max_j (sum_{i<=j} s_i - z) / j`` over the descending sort ``s``, which needs no
    gather and so runs in every Array API namespace and under jit.

    Args:
        v: array of shape ``(..., M)``, any real floating dtype.
        floor: minimum weight per coordinate; ``M * floor < total`` is required.
        total: the mass of the simplex, a scalar or an array broadcastable to ``(..., 1)``.
        mask: optional bool array of shape ``(..., M)``. Only ``True`` coordinates are projected
            (onto mass ``total``); the others are returned unchanged (the ``skip`` policy).

    Returns:
        Array of the shape and dtype of ``v``.

    Raises:
        ValueError: if the floor is negative or infeasible (``M * floor >= total``).

    Examples:
        >>> import numpy as np
        >>> project_simplex(np.array([1.0, 1.0, 0.0])).tolist()
        [0.5, 0.5, 0.0]
        >>> project_simplex(np.array([1.0, 1.0, 0.0]), floor=0.1).round(6).tolist()
        [0.45, 0.45, 0.1]
    """
    xp = namespace(v, mask)
    num = v.shape[-1]
    if mask is None:  # with a mask the total is data (the moving domains' mass), not a user setting
        _check_floor(floor, total, num)
    active = xp.ones(v.shape, dtype=xp.bool) if mask is None else xp.broadcast_to(mask, v.shape)
    n_active = xp.sum(xp.astype(active, v.dtype), axis=-1, keepdims=True)
    mass = total - n_active * floor
    y = xp.where(active, v - floor, xp.asarray(-xp.inf, dtype=v.dtype))
    s = xp.sort(y, axis=-1, descending=True)
    j = xp.reshape(xp.arange(1, num + 1, dtype=v.dtype), (1,) * (v.ndim - 1) + (num,))
    theta = xp.max((xp.cumulative_sum(s, axis=-1) - mass) / j, axis=-1, keepdims=True)
    theta = xp.where(xp.isfinite(theta), theta, xp.zeros_like(theta))  # no active coordinate at all
    out = xp.maximum(y - theta, xp.zeros_like(y)) + floor
    return xp.where(active, out, v)


def eg_step(alpha: Array, grad: Array, lr: float | Array, *, mask: Array | None = None) -> Array:
    """Exponentiated-gradient (mirror descent) step: ``alpha * exp(-lr * grad)``, renormalised.

    Computed as a max-shifted softmax of ``log(alpha) - lr * grad``, so large ``lr * grad`` cannot
    overflow. Zero weights stay zero.

    Args:
        alpha: array of shape ``(..., M)`` on the simplex.
        grad: array broadcastable to ``alpha``; lower values gain weight.
        lr: step size (a scalar).
        mask: optional bool array ``(..., M)``: only ``True`` coordinates move; together they keep
            their current total mass, the others are returned unchanged.

    Returns:
        Array of the shape and dtype of ``alpha``, on the simplex.

    Examples:
        >>> import numpy as np
        >>> eg_step(np.array([0.5, 0.5]), np.array([0.0, np.log(3.0)]), 1.0).round(6).tolist()
        [0.75, 0.25]
    """
    xp = namespace(alpha, grad, mask)
    grad = xp.astype(xp.asarray(grad), alpha.dtype)
    active = (
        xp.ones(alpha.shape, dtype=xp.bool) if mask is None else xp.broadcast_to(mask, alpha.shape)
    )
    neg_inf = xp.asarray(-xp.inf, dtype=alpha.dtype)
    with_zero = xp.where(
        alpha > 0, alpha, xp.ones_like(alpha)
    )  # log(0) is handled by the where below
    logits = xp.where(active & (alpha > 0), xp.log(with_zero) - lr * grad, neg_inf)
    shift = xp.max(logits, axis=-1, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
    unnorm = xp.exp(logits - shift)
    norm = xp.sum(unnorm, axis=-1, keepdims=True)
    mass = xp.sum(xp.where(active, alpha, xp.zeros_like(alpha)), axis=-1, keepdims=True)
    scaled = unnorm * (mass / xp.where(norm > 0, norm, xp.ones_like(norm)))
    return xp.where(active, scaled, alpha)


def smooth(alpha: Array, c: float) -> Array:
    """Mix toward uniform: ``(1 - c) * alpha + c / M`` (DoReMi Alg. 1 smoothing).

    Args:
        alpha: array of shape ``(..., M)``.
        c: smoothing in ``[0, 1]``.

    Returns:
        Array of the shape and dtype of ``alpha``.
    """
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"smoothing c must be in [0, 1], got {c}")
    return (1.0 - c) * alpha + c / alpha.shape[-1]


def time_average(alpha_sum: Array, count: Array, fallback: Array) -> Array:
    """Time average ``alpha_sum / count``, or ``fallback`` where ``count == 0``.

    Args:
        alpha_sum: array ``(..., M)``, the sum of the mixtures to average.
        count: integer array ``(...)``, the number of mixtures summed.
        fallback: array ``(..., M)``, returned where nothing was summed yet.

    Returns:
        Array ``(..., M)`` in the dtype of ``alpha_sum``.
    """
    xp = namespace(alpha_sum, count, fallback)
    n = xp.astype(count, alpha_sum.dtype)[..., None]
    return xp.where(n > 0, alpha_sum / xp.where(n > 0, n, xp.ones_like(n)), fallback)


def running_mean(mean: Array, x: Array, count: Array) -> Array:
    """Incremental mean: the mean of ``count`` values updated with one more value ``x``.

    Args:
        mean: array ``(..., M)``, the mean of the first ``count`` values (unused at count 0).
        x: array ``(..., M)``, the new value.
        count: integer array ``(...)``, how many values ``mean`` already averages.

    Returns:
        Array ``(..., M)``: ``mean + (x - mean) / (count + 1)``.
    """
    xp = namespace(mean, x, count)
    n = xp.astype(count, mean.dtype)[..., None]
    return mean + (x - mean) / (n + 1)
