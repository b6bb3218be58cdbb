"""Private helpers of ``taskpgm``: divergence kernels (Array API) and host-side simplex QP solvers.

The kernels run on device in any namespace and under jit. The solvers are host-side numpy
float64 code for small ``N`` (tasks), called by ``taskpgm.solve_mixture``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from ._utils import Array, array_device, to_numpy
from .simplex import project_simplex

LN2 = math.log(2.0)
METHODS = ("active_set", "pgd", "mean_field")


# --------------------------------------------------------------------------- divergence kernels


def compute_dtype(x: Array, *, xp: Any) -> Any:
    """Float dtype to compute divergences in: at least float32 (bf16/fp16 logits lose the tail)."""
    if not xp.isdtype(x.dtype, "real floating"):
        return xp.asarray(0.0).dtype
    return x.dtype if xp.finfo(x.dtype).bits >= 32 else xp.float32


def log_softmax(x: Array, *, axis: int, xp: Any) -> Array:
    """Max-shifted log-softmax; entries at ``-inf`` (truncated away) stay ``-inf``."""
    shift = xp.max(x, axis=axis, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
    z = x - shift
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def top_k_mask(x: Array, k: int, *, axis: int, xp: Any) -> Array | None:
    """Bool mask of the entries ``>=`` the k-th largest along ``axis`` (ties kept); None if k >= V.

    A sort plus a static slice (no ``topk``/gather in the Array API), so it runs under jit.
    """
    axis = axis % x.ndim
    if k >= x.shape[axis]:
        return None
    s = xp.sort(x, axis=axis, descending=True)
    index = tuple(slice(k - 1, k) if d == axis else slice(None) for d in range(x.ndim))
    return x >= s[index]


def jsd_from_log_probs(
    log_p: Array, log_q: Array, p: Array, q: Array, *, axis: int, xp: Any
) -> Array:
    """``0.5 KL(P||M) + 0.5 KL(Q||M)``, ``M = (P + Q) / 2``, clipped to [0, ln 2].

    Step 2 of docs/methods.md, "TaskPGM: Steps". ``log M = hi + (log1p(exp(lo - hi)) - ln 2)``
    with ``hi, lo`` the larger and smaller of ``log P, log Q``: a stable logaddexp whose bracket
    is exactly 0 when ``P = Q`` (``log1p(1)`` rounds to ``ln 2``), so identical distributions
    give exactly 0. Every ``0 * log 0`` is replaced by 0 through ``where`` on both factors, so
    neither NaN nor a numpy "invalid value" warning appears when probabilities are exactly 0.
    """
    hi, lo = xp.maximum(log_p, log_q), xp.minimum(log_p, log_q)
    hi_safe = xp.where(hi > -math.inf, hi, xp.zeros_like(hi))  # both -inf: no inf - inf
    log_m = hi + (xp.log1p(xp.exp(lo - hi_safe)) - LN2)
    zero = xp.zeros_like(log_p)

    def kl_to_m(log_a: Array, a: Array) -> Array:
        live = a > 0  # then M > 0 too, so both logs are finite
        diff = xp.where(live, log_a, zero) - xp.where(live, log_m, zero)
        return xp.sum(a * diff, axis=axis)

    jsd = 0.5 * (kl_to_m(log_p, p) + kl_to_m(log_q, q))
    return xp.clip(jsd, 0.0, LN2)  # roundoff can leave tiny values outside the true range


def pair_sums(x: Array, weight: Array, top_k: int | None, *, xp: Any) -> list[Array]:
    """Weighted token sums of the JSD of every pair ``i < j`` of ``x (N, ..., V)`` (row-major).

    Without top-k, one log-softmax per model is shared by its ``N - 1`` pairs; with top-k each
    pair is renormalised over the union of its two top-k sets. Pairs are evaluated one at a time
    (a Python loop over static indices, unrolled under jit), so the extra memory is a few
    ``(..., V)`` arrays instead of ``N^2`` of them. ``where`` (not a product with 0) drops
    masked positions, so non-finite logits there cannot leak into the sums.
    """
    n = x.shape[0]
    keep = None if top_k is None else top_k_mask(x, top_k, axis=-1, xp=xp)
    if keep is None:
        log_p = log_softmax(x, axis=-1, xp=xp)
        prob = xp.exp(log_p)
    neg_inf = xp.asarray(-math.inf, dtype=x.dtype, device=array_device(x))
    live = weight > 0
    values = []
    for i in range(n):
        for j in range(i + 1, n):
            if keep is None:
                lp, lq, p, q = log_p[i, ...], log_p[j, ...], prob[i, ...], prob[j, ...]
            else:
                union = keep[i, ...] | keep[j, ...]
                lp = log_softmax(xp.where(union, x[i, ...], neg_inf), axis=-1, xp=xp)
                lq = log_softmax(xp.where(union, x[j, ...], neg_inf), axis=-1, xp=xp)
                p, q = xp.exp(lp), xp.exp(lq)
            jsd = xp.astype(jsd_from_log_probs(lp, lq, p, q, axis=-1, xp=xp), weight.dtype)
            values.append(xp.sum(xp.where(live, jsd * weight, xp.zeros_like(jsd))))
    return values


def pair_basis(n: int) -> np.ndarray:
    """``(P, N, N)`` 0/1 basis placing the ``P = N(N-1)/2`` pair values (row-major) at ij, ji."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    basis = np.zeros((len(pairs), n, n))
    for k, (i, j) in enumerate(pairs):
        basis[k, i, j] = basis[k, j, i] = 1.0
    return basis


# --------------------------------------------------------------------------- host-side problem


def check_positive_scalar(name: str, value: Any, *, allow_zero: bool) -> float:
    """Validate a Python hyper-parameter that must be finite and > 0 (or >= 0)."""
    ok = isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def as_affinity(S: Any, *, name: str = "S") -> np.ndarray:
    """``S`` as a finite, square float64 matrix, symmetrised (only ``(S + S^T)/2`` enters E)."""
    S = np.asarray(to_numpy(S), dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 1:
        raise ValueError(f"{name} must be a square (N, N) matrix with N >= 1, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name} has non-finite entries (NaN/inf); did any probe token count?")
    return 0.5 * (S + S.T)


def as_utility(u: Any, n: int) -> np.ndarray:
    """``u`` as a finite float64 vector of shape ``(n,)``."""
    u = np.asarray(to_numpy(u), dtype=np.float64)
    if u.shape != (n,):
        raise ValueError(f"u must have shape ({n},) to match S of shape ({n}, {n}), got {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("u has non-finite entries (NaN/inf)")
    return u


def min_eig(M: np.ndarray) -> float:
    """Smallest eigenvalue of the symmetric part of ``M``."""
    return float(np.linalg.eigvalsh(0.5 * (M + M.T))[0])


def gradient_gap(p: np.ndarray, u: np.ndarray, A: np.ndarray, support_tol: float) -> float:
    """Largest violation of the simplex KKT conditions of ``E`` at ``p`` (see ``kkt_residual``)."""
    g = 0.5 * (A + A.T) @ p - u
    support = p > support_tol
    if not support.any():
        return math.inf
    c = float(np.mean(g[support]))  # -nu: the multiplier of 1^T p = 1
    stationarity = np.max(np.abs(g[support] - c))
    complementarity = np.max(c - g[~support], initial=0.0)  # g_i >= c off the support
    feasibility = max(abs(float(p.sum()) - 1.0), float(np.max(-p, initial=0.0)))
    return float(max(stationarity, complementarity, feasibility))


# --------------------------------------------------------------------------- solvers


def _face_optimum(A: np.ndarray, u: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The closed form on the face ``F = free``: ``q = A_FF^{-1}(u_F + nu 1)``.

    See docs/methods.md, "TaskPGM: Energy and solvers".

    ``nu = (1 - 1^T A_FF^{-1} u_F) / (1^T A_FF^{-1} 1)`` enforces ``1^T q = 1``. ``A_FF`` is a
    principal submatrix of a positive definite ``A``, hence positive definite, so
    ``1^T A_FF^{-1} 1 > 0``. Returns the full ``(N,)`` vector with zeros off ``F``.
    """
    sub = A[np.ix_(free, free)]
    solved = np.linalg.solve(sub, np.stack([u[free], np.ones(int(free.sum()))], axis=1))
    a, b = solved[:, 0], solved[:, 1]
    nu = (1.0 - a.sum()) / b.sum()
    q = np.zeros_like(u)
    q[free] = a + nu * b
    return q


def active_set(A: np.ndarray, u: np.ndarray, *, tol: float, max_iter: int) -> np.ndarray:
    """Exact minimiser of ``E`` on the simplex for positive definite ``A``.

    Phase 1 is the rule of docs/methods.md, "TaskPGM: Energy and solvers": closed form, drop
    every negative coordinate, re-solve. Each round removes at least one index and never empties
    the face (the face optimum sums to 1), so it ends within N solves at a feasible point that is
    optimal on its face. Dropping *all* negatives at once is not always right for a general ``A``
    (about one random problem in six leaves an off-support gradient below the support's), so
    phase 2 is the primal active-set method (Nocedal & Wright, Alg. 16.3) from there: release
    the index whose KKT multiplier ``g_i - c`` is most negative, move toward the new face
    optimum, and fix the first coordinate that would cross 0 (ratio test). For strictly convex
    ``E`` each face optimum reached has a strictly lower energy than the last, so no face repeats
    and the loop terminates; it stops when ``g_i >= c - tol`` off the support, i.e. the KKT
    conditions hold.
    """
    n = u.shape[0]
    free = np.ones(n, dtype=bool)
    while True:  # phase 1
        q = _face_optimum(A, u, free)
        if q[free].min() >= 0.0:
            break
        free &= q >= 0.0
    p = np.where(free, q, 0.0)
    scale = 1.0 + np.max(np.abs(u)) + np.max(np.abs(A))
    for _ in range(max_iter):  # phase 2
        g = A @ p - u
        c = float(np.mean(g[free]))
        multipliers = np.where(free, np.inf, g - c)
        j = int(np.argmin(multipliers))
        if multipliers[j] >= -tol * scale:
            return _clean(p)
        free[j] = True
        while True:
            q = _face_optimum(A, u, free)
            if q[free].min() >= 0.0:
                p = q
                break
            d = q - p
            blocking = free & (d < 0.0)
            ratios = np.where(blocking, p / np.where(blocking, -d, 1.0), np.inf)
            k = int(np.argmin(ratios))
            p = np.where(free, np.maximum(p + ratios[k] * d, 0.0), 0.0)
            p[k] = 0.0
            free[k] = False
    raise RuntimeError(f"active set did not converge in {max_iter} iterations (degenerate QP?)")


def pgd(A: np.ndarray, u: np.ndarray, *, tol: float, max_iter: int, momentum: bool) -> np.ndarray:
    """Projected gradient, step ``1/L`` with ``L = max |eig(A)|`` (a fallback solver).

    See docs/methods.md, "TaskPGM: Energy and solvers".

    With ``momentum`` (convex case) it is FISTA with the gradient restart of O'Donoghue & Candès
    (2015): same step and projection, much faster when the ridge ``mu`` barely exceeds the
    redundancy curvature. Stops when an iterate moves less than ``tol`` (max norm).
    """
    n = u.shape[0]
    step = 1.0 / max(float(np.max(np.abs(np.linalg.eigvalsh(A)))), 1e-300)
    p = y = np.full(n, 1.0 / n)
    t = 1.0
    for _ in range(max_iter):
        p_new = project_simplex(y - step * (A @ y - u))
        moved = float(np.max(np.abs(p_new - p)))
        if momentum and float(np.dot(y - p_new, p_new - p)) <= 0.0:
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            y, t = p_new + ((t - 1.0) / t_new) * (p_new - p), t_new
        else:  # plain step, or a restart because momentum pointed uphill
            y, t = p_new, 1.0
        p = p_new
        if moved < tol:
            return _clean(p)
    warnings.warn(f"pgd did not converge in {max_iter} iterations", RuntimeWarning, stacklevel=3)
    return _clean(p)


def regularised_energy(p: np.ndarray, u: np.ndarray, A: np.ndarray, tau_e: float) -> float:
    """``E(p) + tau_e sum_i p_i log p_i`` in numpy float64 (``0 log 0 = 0``)."""
    safe = np.where(p > 0, p, 1.0)
    return float(-u @ p + 0.5 * p @ A @ p + tau_e * np.sum(p * np.log(safe)))


def mean_field(
    A: np.ndarray, u: np.ndarray, *, tau_e: float, damping: float | None, tol: float, max_iter: int
) -> np.ndarray:
    """Damped fixed point of ``p = softmax((u - A p) / tau_e)`` (mean field).

    The damping is geometric, ``log p <- (1 - beta) log p + beta log softmax(...)`` (then
    renormalised), not the arithmetic ``(1 - beta) p + beta softmax(...)`` first planned
    (docs/methods.md, "TaskPGM: Energy and solvers"): both keep ``p`` on the simplex and share
    the fixed point, but the arithmetic form is a conditional-gradient step that zigzags between
    near-vertices when ``tau_e`` is small (measured: no convergence in 2e5 iterations for N = 8,
    tau_e = 0.01, even with exact line search), while the geometric form is entropic mirror
    descent on ``F = E + tau_e sum p log p`` with step ``beta / tau_e``. ``F`` is
    ``max|A_ij|``-smooth and ``tau_e``-strongly convex relative to the entropy, so
    ``beta = tau_e / (tau_e + max|A_ij|)`` (the default) converges linearly (Lu, Freund & Nesterov
    2018); a larger user ``beta`` is halved whenever ``F`` would increase. Stops when the
    fixed-point residual ``max|softmax(...) - p|`` is below ``tol``.
    """
    n = u.shape[0]
    beta = tau_e / (tau_e + float(np.max(np.abs(A)))) if damping is None else damping
    log_p = np.full(n, -math.log(n))
    p = np.exp(log_p)
    f = regularised_energy(p, u, A, tau_e)
    for _ in range(max_iter):
        log_t = _log_normalise((u - A @ p) / tau_e)
        if float(np.max(np.abs(np.exp(log_t) - p))) < tol:
            return np.exp(log_t)
        log_c = _log_normalise((1.0 - beta) * log_p + beta * log_t)
        f_new = regularised_energy(np.exp(log_c), u, A, tau_e)
        if f_new > f + 1e-13 * (1.0 + abs(f)) and beta > 1e-12:
            beta *= 0.5  # overshoot: a smaller step always decreases F
            continue
        log_p, p, f = log_c, np.exp(log_c), f_new
    warnings.warn(
        f"mean_field did not converge in {max_iter} iterations; raise tau_e or max_iter",
        RuntimeWarning,
        stacklevel=3,
    )
    return p


def _log_normalise(z: np.ndarray) -> np.ndarray:
    """``log softmax(z)``, max-shifted."""
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


def _clean(p: np.ndarray) -> np.ndarray:
    """Clip roundoff negatives and renormalise, so the result is exactly on the simplex."""
    p = np.maximum(p, 0.0)
    return p / p.sum()


def greedy(u: np.ndarray, S: np.ndarray, *, lam: float, k: int, stop_early: bool) -> list[int]:
    """Greedy selection for ``taskpgm.greedy_subset``, ``O(k N)``.

    Step 5 of docs/methods.md, "TaskPGM: Steps".
    """
    n = u.shape[0]
    chosen: list[int] = []
    gain = u.copy()  # marginal gain u_i - lam sum_{j in chosen} S_ij, updated incrementally
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        j = int(np.argmax(np.where(available, gain, -np.inf)))
        if stop_early and chosen and gain[j] <= 0.0:
            break
        chosen.append(j)
        available[j] = False
        gain = gain - lam * S[:, j]
    return chosen
