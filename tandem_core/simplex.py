"""The probability simplex: projection (with floor), exponentiated gradient, smoothing, averages.

Every function is batched over leading axes; the simplex axis is the last one (size ``M``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._utils import Array, is_traced, namespace, to_numpy

__all__ = ["eg_step", "project_simplex", "running_mean", "smooth", "time_average"]


def _check_floor(floor: Any, total: Any, num: int) -> None:
    if isinstance(total, (int, float)) and not 0 < total < math.inf:
        raise ValueError(f"total must be > 0 and finite, got {total}")
    if isinstance(floor, (int, float)) and isinstance(total, (int, float)):
        if not floor >= 0:
            raise ValueError(f"floor must be >= 0, got {floor}")
        if floor > 0 and num * floor >= total:
            raise ValueError(
                f"floor={floor} is infeasible for M={num} domains: M * floor = {num * floor} must "
                f"be < {total}; use floor < {total / num}"
            )


def _check_floating(name: str, x: Array, *, xp: Any) -> None:
    if x.ndim < 1 or not xp.isdtype(x.dtype, "real floating"):
        raise ValueError(
            f"{name} must be a real floating array of shape (..., M), got dtype {x.dtype} and "
            f"shape {tuple(x.shape)}"
        )


def _check_broadcast(name: str, x: Array, shape: tuple, target: str) -> None:
    try:
        fits = np.broadcast_shapes(tuple(x.shape), tuple(shape)) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {tuple(x.shape)} does not broadcast to {target}'s shape "
            f"{tuple(shape)}"
        )


def project_simplex(
    v: Array, floor: float | Array = 0.0, *, total: float | Array = 1.0, mask: Array | None = None
) -> Array:
    """Euclidean projection onto ``{x : x_m >= floor, sum_m x_m = total}`` (Duchi et al. 2008).

    Sort-based. With a floor, ``v - floor`` is projected onto the simplex of mass
    ``total - M * floor`` and the floor added back. The threshold is
    ``theta = max_j (sum_{i<=j} s_i - z) / j`` over the descending sort ``s``, which needs no
    gather and so runs in every Array API namespace and under jit.

    Exact for every finite input: the coordinates are shifted by their maximum first (the
    projection is shift invariant), so the cumulative sums only add numbers of the size of the
    mass ``z``, and a coordinate more than ``z + 1`` below the maximum (which the projection
    sets to ``floor`` whatever its value) enters as ``-(z + 1)``, so nothing overflows. Without
    the shift, ``[3e7, -2e7, 1e7, 5e6, -2.5e7]`` in float32 or ``[1e308] * 3`` lose the simplex.

    Args:
        v: array of shape ``(..., M)``, any real floating dtype, finite values.
        floor: minimum weight per coordinate; ``M * floor < total`` is required.
        total: the mass of the simplex, a scalar or an array broadcastable to ``(..., 1)``.
        mask: optional bool array of shape ``(..., M)``. Only ``True`` coordinates are projected
            (onto mass ``total``); the others are returned unchanged (the ``skip`` policy).

    Returns:
        Array of the shape and dtype of ``v``.

    Raises:
        ValueError: if ``v`` is not a floating array ``(..., M)``, the mask does not broadcast to
            it, or the floor is negative or infeasible (``M * floor >= total``).

    Examples:
        >>> import numpy as np
        >>> project_simplex(np.array([1.0, 1.0, 0.0])).tolist()
        [0.5, 0.5, 0.0]
        >>> project_simplex(np.array([1.0, 1.0, 0.0]), floor=0.1).round(6).tolist()
        [0.45, 0.45, 0.1]
        >>> project_simplex(np.array([3e7, -2e7, 1e7], dtype=np.float32)).tolist()
        [1.0, 0.0, 0.0]
    """
    xp = namespace(v, mask)
    _check_floating("v", v, xp=xp)
    num = v.shape[-1]
    if mask is None:  # with a mask the total is data (the moving domains' mass), not a user setting
        _check_floor(floor, total, num)
    else:
        _check_broadcast("mask", mask, v.shape, "v")
    active = xp.ones(v.shape, dtype=xp.bool) if mask is None else xp.broadcast_to(mask, v.shape)
    n_active = xp.sum(xp.astype(active, v.dtype), axis=-1, keepdims=True)
    mass = total - n_active * floor
    y = xp.where(active, v - floor, xp.asarray(-xp.inf, dtype=v.dtype))
    top = xp.max(y, axis=-1, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))  # no active coordinate at all
    reach = mass + 1.0  # theta >= top - mass: anything further below the top projects to 0
    near = y >= top - reach
    y = xp.where(near, xp.where(near, y, top) - top, -reach)  # <= 0, >= -reach: no overflow
    s = xp.sort(y, axis=-1, descending=True)
    j = xp.reshape(xp.arange(1, num + 1, dtype=v.dtype), (1,) * (v.ndim - 1) + (num,))
    theta = xp.max((xp.cumulative_sum(s, axis=-1) - mass) / j, axis=-1, keepdims=True)
    out = xp.maximum(y - theta, xp.zeros_like(y)) + floor
    return xp.where(active, out, v)


def eg_step(
    alpha: Array,
    grad: Array,
    lr: float | Array,
    *,
    mask: Array | None = None,
    checked: bool | None = None,
) -> Array:
    """Exponentiated-gradient (mirror descent) step: ``alpha * exp(-lr * grad)``, renormalised.

    Computed as a max-shifted softmax of ``log(alpha) - lr * grad``, so large ``lr * grad`` cannot
    overflow. Zero weights stay zero. The result is normalised to 1 (with a ``mask``: the moving
    coordinates to ``1 - sum(frozen)``), not to ``alpha``'s own sum, so rounding does not
    accumulate over many steps.

    A non-finite ``grad`` or ``lr`` has no meaningful step (the result would be NaN): a Python
    ``lr`` is always checked, and with ``checked`` (the default whenever the arrays are concrete)
    so are the values of ``grad`` and of an array ``lr``. Under ``jax.jit`` or ``torch.compile``
    values cannot be read, so nothing is raised and the result is not finite: the mixture
    transforms call this with ``checked=False`` and their guard skips such an update (it counts
    it in ``MixtureState.skipped``).

    Args:
        alpha: array of shape ``(..., M)`` on the simplex.
        grad: array broadcastable to ``alpha``; lower values gain weight.
        lr: step size (a finite scalar).
        mask: optional bool array ``(..., M)``: only ``True`` coordinates move; together they keep
            their total mass ``1 - sum(frozen)``, the others are returned unchanged.
        checked: raise ``ValueError`` on a non-finite ``grad`` or ``lr`` array. ``None``: check
            unless traced. Checking reads the arrays on the host (a device sync).

    Returns:
        Array of the shape and dtype of ``alpha``, on the simplex.

    Raises:
        ValueError: a non-finite Python ``lr``; ``grad`` or ``mask`` not broadcastable to
            ``alpha``; with ``checked``, a non-finite value in ``grad`` or in an array ``lr``.

    Examples:
        >>> import numpy as np
        >>> eg_step(np.array([0.5, 0.5]), np.array([0.0, np.log(3.0)]), 1.0).round(6).tolist()
        [0.75, 0.25]
    """
    xp = namespace(alpha, grad, mask)
    _check_floating("alpha", alpha, xp=xp)
    _check_broadcast("grad", grad, alpha.shape, "alpha")
    if mask is not None:
        _check_broadcast("mask", mask, alpha.shape, "alpha")
    if isinstance(lr, (int, float)) and not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr}")
    if checked or checked is None:
        _check_finite(bool(checked), grad=grad, lr=lr)
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
    # the moving coordinates' target mass is 1 minus the frozen ones' (not their current sum,
    # which would carry every step's rounding into the next: a float32 drift of ~1e-5)
    frozen = xp.sum(xp.where(active, xp.zeros_like(alpha), alpha), axis=-1, keepdims=True)
    mass = 1.0 - frozen if mask is not None else 1.0
    scaled = unnorm * (mass / xp.where(norm > 0, norm, xp.ones_like(norm)))
    return xp.where(active, scaled, alpha)


def _check_finite(strict: bool, **arrays: Any) -> None:
    for name, x in arrays.items():
        if isinstance(x, (int, float)) or (is_traced(x) and not strict):
            continue
        if is_traced(x):
            raise ValueError(
                f"checked=True needs a concrete {name}; under jit use checked=False (the mixture "
                "transforms' guard skips a non-finite step)"
            )
        values = np.asarray(to_numpy(x), dtype=np.float64).reshape(-1)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{name} has a non-finite value {values[bad[0]]} at flat index {int(bad[0])} "
                f"({bad.size} of {values.size}): the step would make the mixture NaN"
            )


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
