"""TaskPGM: task mixtures from behavioural affinities by energy minimisation (SPEC 3).

Pipeline (SPEC 3.3): pairwise Jensen–Shannon divergences ``D`` between single-task models'
predictive distributions (step 2, device side, streamed over probe batches), an affinity ``S``
and a unary utility ``u`` (steps 2–3), then the mixture ``p`` minimising

    E(p) = -u^T p + 1/2 p^T A p,   A = lam (S - I) + mu I,   p on the simplex     (step 4)

or a budgeted subset by greedy maximisation of ``F`` (step 5). Divergences, affinities and
utilities are Array API functions (any namespace, jit-safe); the solvers are host-side numpy
float64 code for small ``N``. Everything in SPEC 3.3 is a DERIVED reconstruction.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _taskpgm_solve as _s
from ._utils import Array, array_device, as_namespace, float_dtype, namespace, to_numpy

__all__ = [
    "AFFINITY_KINDS",
    "SOLVER_METHODS",
    "UTILITY_KINDS",
    "PairwiseJSD",
    "TaskPGMResult",
    "affinity",
    "default_mu",
    "energy",
    "greedy_subset",
    "interaction_matrix",
    "jensen_shannon",
    "jsd_init",
    "jsd_result",
    "jsd_update",
    "kkt_residual",
    "pmi_affinity",
    "solve_mixture",
    "subset_mixture",
    "taskpgm_mixture",
    "unary_utility",
]

AFFINITY_KINDS = ("linear", "exp")
UTILITY_KINDS = ("gain", "coverage", "mix")
SOLVER_METHODS = _s.METHODS
SUBSET_WEIGHTS = ("uniform", "utility")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")


def _check_top_k(top_k: Any) -> None:
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None (full vocabulary) or an int >= 1, got {top_k!r}")


def _check_square(name: str, M: Any) -> int:
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {tuple(M.shape)}")
    return M.shape[0]


# --------------------------------------------------------------------------- step 2: divergences


def jensen_shannon(
    logits_p: Array, logits_q: Array, *, axis: int = -1, top_k: int | None = None
) -> Array:
    """Jensen–Shannon divergence of the softmaxes of two logit arrays (SPEC 3.3 step 2).

    ``JSD = 0.5 KL(P||M) + 0.5 KL(Q||M)``, ``M = (P + Q)/2``, in nats, in ``[0, ln 2]``: 0 for
    identical distributions (exactly), ``ln 2`` for disjoint supports. Computed from max-shifted
    log-softmaxes and a stable log-sum-exp for ``log M``, never ``P + Q`` in linear space; zero
    probabilities (including ``-inf`` logits) contribute exactly 0, never NaN. bf16/fp16 logits
    are computed in float32.

    Top-k truncation (SPEC 3.4, DERIVED definition): keep the union of P's and Q's top-k tokens
    (every token whose logit is ``>=`` the k-th largest, so ties may keep more than k) and
    renormalise both distributions over that union. The result is symmetric, is exact when
    ``top_k >= V``, is 0 for identical inputs and ``ln 2`` when the two top-k sets carry disjoint
    mass. It costs a sort over the vocabulary; it saves memory only where a backend stores
    truncated distributions.

    Args:
        logits_p: array ``(..., V, ...)`` of real logits (unnormalised log-probabilities).
        logits_q: array of the same shape (or broadcastable, same rank).
        axis: the vocabulary axis.
        top_k: None for the full vocabulary, or an int >= 1.

    Returns:
        Array of the broadcast shape without ``axis``, floating (at least float32).

    Examples:
        >>> import numpy as np
        >>> round(float(jensen_shannon(np.array([0.0, -np.inf]), np.array([-np.inf, 0.0]))), 6)
        0.693147
    """
    _check_top_k(top_k)
    xp = namespace(logits_p, logits_q)
    dtype = _s.compute_dtype(logits_p, xp=xp)
    lp, lq = xp.astype(logits_p, dtype), xp.astype(logits_q, dtype)
    if top_k is not None:
        keep_p = _s.top_k_mask(lp, top_k, axis=axis, xp=xp)
        keep_q = _s.top_k_mask(lq, top_k, axis=axis, xp=xp)
        if keep_p is not None:
            keep = keep_p | keep_q
            neg_inf = xp.asarray(-math.inf, dtype=dtype, device=array_device(lp))
            lp, lq = xp.where(keep, lp, neg_inf), xp.where(keep, lq, neg_inf)
    log_p = _s.log_softmax(lp, axis=axis, xp=xp)
    log_q = _s.log_softmax(lq, axis=axis, xp=xp)
    return _s.jsd_from_log_probs(log_p, log_q, xp.exp(log_p), xp.exp(log_q), axis=axis, xp=xp)


class PairwiseJSD(NamedTuple):
    """Streaming sums for the token-mean pairwise JSD matrix ``D`` (SPEC 3.3 step 2, 3.6)."""

    sum: Array  # (N, N) float: sum over probe tokens of the weighted JSD, symmetric, zero diagonal
    count: Array  # () float: sum of the token weights (the number of masked-in tokens)


def jsd_init(n: int, *, xp: Any = None, dtype: Any = None, device: Any = None) -> PairwiseJSD:
    """Empty accumulator for ``n`` models.

    Args:
        n: number of single-task models ``N >= 1``.
        xp: array module (``numpy``, ``torch``, ``jax.numpy``, ...); numpy when None.
        dtype: float dtype of the sums; the namespace default float when None.
        device: device of the arrays.

    Returns:
        ``PairwiseJSD`` of zeros: ``sum (N, N)``, ``count ()``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of models) must be an int >= 1, got {n!r}")
    xp = as_namespace(xp)
    dtype = xp.asarray(0.0).dtype if dtype is None else dtype
    return PairwiseJSD(
        sum=xp.zeros((n, n), dtype=dtype, device=device),
        count=xp.zeros((), dtype=dtype, device=device),
    )


def jsd_update(
    state: PairwiseJSD, logits: Array, mask: Array | None = None, *, top_k: int | None = None
) -> PairwiseJSD:
    """Add one probe batch: the masked per-token JSD of every model pair (SPEC 3.3 step 2, 3.6).

    Only the ``N(N-1)/2`` pairs ``i < j`` are evaluated, one at a time (extra memory: a few
    ``(..., V)`` arrays), and mirrored into the symmetric sum. Sums and counts are token-weighted,
    so after several batches ``jsd_result`` is the token mean over their concatenation (SPEC:
    ``D_ij = E_{(x,t) in X} JSD``). Masked-out positions contribute nothing, even NaN logits
    there. Pure and jit-safe (``N`` and ``top_k`` are static). For a large vocabulary keep
    ``N * B * T * V`` floats within memory by choosing the probe batch size (SPEC 3.6).

    Args:
        state: the accumulator for ``N`` models.
        logits: array ``(N, ..., V)``, e.g. ``(N, B, T, V)``: model ``i``'s logits on the batch.
        mask: optional bool or float array ``(...)``, e.g. ``(B, T)``: response-token mask or
            token weights; None counts every position.
        top_k: None for the full vocabulary, or the truncation of ``jensen_shannon``.

    Returns:
        The updated ``PairwiseJSD`` (dtypes of ``state``).
    """
    _check_top_k(top_k)
    xp = namespace(state.sum, logits, mask)
    n = state.sum.shape[0]
    if logits.ndim < 2 or logits.shape[0] != n:
        raise ValueError(f"logits must have shape (N={n}, ..., V), got {tuple(logits.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(logits.shape[1:-1]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} != logits.shape[1:-1] {logits.shape[1:-1]}"
        )
    out_dtype = state.sum.dtype
    x = xp.astype(logits, _s.compute_dtype(logits, xp=xp))
    weight = (
        xp.ones(x.shape[1:-1], dtype=out_dtype, device=array_device(x))
        if mask is None
        else xp.astype(mask, out_dtype)
    )
    values = _s.pair_sums(x, weight, top_k, xp=xp)
    added = xp.zeros_like(state.sum)
    if values:  # mirror the upper pairs into the symmetric (N, N) sum: no scatter needed
        basis = xp.asarray(_s.pair_basis(n), dtype=out_dtype, device=array_device(state.sum))
        added = xp.sum(xp.reshape(xp.stack(values), (-1, 1, 1)) * basis, axis=0)
    count = xp.sum(xp.where(weight > 0, weight, xp.zeros_like(weight)))
    return PairwiseJSD(sum=state.sum + added, count=state.count + count)


def jsd_result(state: PairwiseJSD) -> Array:
    """The divergence matrix ``D = sum / count`` (N, N), symmetric, zero diagonal, in [0, ln 2].

    Before any token was counted the off-diagonal is NaN (not 0, which would read as "all tasks
    identical"); the host-side solvers reject it.
    """
    xp = namespace(state.sum, state.count)
    safe = xp.where(state.count > 0, state.count, xp.ones_like(state.count))
    off_diagonal = _off_diagonal(state.sum, xp=xp)
    mean = xp.where(state.count > 0, state.sum / safe, xp.full_like(state.sum, math.nan))
    return xp.where(off_diagonal, mean, xp.zeros_like(mean))


def _off_diagonal(M: Array, *, xp: Any) -> Array:
    """Bool ``(N, N)`` mask of the off-diagonal entries, on ``M``'s device."""
    n = M.shape[0]
    return xp.eye(n, dtype=M.dtype, device=array_device(M)) == 0


# --------------------------------------------------------------------------- steps 2-3: S and u


def affinity(D: Array, kind: str = "linear", sigma: float | None = None) -> Array:
    """Affinity (redundancy) ``S`` from divergences ``D`` (SPEC 3.3 step 2), ``S_ii = 1``.

    ``kind="linear"``: ``S = 1 - D / ln 2`` (in [0, 1] for D in [0, ln 2]). ``kind="exp"``:
    ``S = exp(-D / sigma)``; with ``sigma=None`` sigma is the mean off-diagonal divergence (a
    DERIVED scale heuristic, computed on device). The full-vocabulary JSD is conditionally
    negative definite (its square root is a Hilbertian metric), and so is its token mean, so the
    exp affinity is positive semi-definite for every sigma (Schoenberg): the default ridge is
    then ``mu = lam`` (see ``default_mu``).

    Args:
        D: array ``(N, N)`` of divergences in nats, any real floating dtype.
        kind: one of ``AFFINITY_KINDS``.
        sigma: bandwidth > 0 for ``kind="exp"``; must be None for ``kind="linear"``.

    Returns:
        Array ``(N, N)`` in the dtype of ``D``.
    """
    _check_choice("affinity kind", kind, AFFINITY_KINDS)
    if kind == "linear" and sigma is not None:
        raise ValueError("sigma applies only to kind='exp'; pass sigma=None for kind='linear'")
    if sigma is not None:
        _s.check_positive_scalar("sigma", sigma, allow_zero=False)
    xp = namespace(D)
    n = _check_square("D", D)
    off = _off_diagonal(D, xp=xp)
    if kind == "linear":
        S = 1.0 - D / _s.LN2
    else:
        if sigma is None:
            scale = xp.sum(xp.where(off, D, xp.zeros_like(D))) / max(n * (n - 1), 1)
            sigma = xp.where(scale > 0, scale, xp.ones_like(scale))  # all-zero D: any sigma works
        S = xp.exp(-D / sigma)
    return xp.where(off, S, xp.ones_like(S))


def pmi_affinity(cross_loss: Array, base_loss: Array) -> Array:
    """PMI affinity (SPEC 3.3 step 2, PMI variant; DERIVED, the paper's form is UNKNOWN).

    ``PMI_ij = L0_j - L_ij`` (= E_{T_j}[log P_i(y|x) - log P_0(y|x)] for token-mean NLLs),
    symmetrised ``(PMI + PMI^T)/2``, then squashed to [0, 1] by normalising with the self-gains:
    ``S_ij = clip(PMI_ij / sqrt(PMI_ii PMI_jj), 0, 1)`` (a transfer "correlation": 1 when model i
    gains as much on task j as task j's own model, 0 for no or negative transfer). A task whose
    own fine-tune did not help (``PMI_ii <= 0``) gets ``S_ij = 0`` for ``j != i``; ``S_ii = 1``.

    Args:
        cross_loss: array ``(N, N)``, ``cross_loss[i, j]`` = mean NLL of model i on task j's data.
        base_loss: array ``(N,)``, mean NLL of the base model on each task's data.

    Returns:
        Array ``(N, N)`` in the dtype of ``cross_loss``.
    """
    xp = namespace(cross_loss, base_loss)
    n = _check_square("cross_loss", cross_loss)
    if tuple(base_loss.shape) != (n,):
        raise ValueError(f"base_loss must have shape ({n},), got {tuple(base_loss.shape)}")
    pmi = xp.reshape(base_loss, (1, n)) - cross_loss
    pmi = 0.5 * (pmi + xp.permute_dims(pmi, (1, 0)))
    diagonal = xp.sum(xp.where(_off_diagonal(pmi, xp=xp), xp.zeros_like(pmi), pmi), axis=1)
    self_gain = xp.maximum(diagonal, xp.zeros_like(diagonal))
    norm = xp.sqrt(xp.reshape(self_gain, (n, 1)) * xp.reshape(self_gain, (1, n)))
    ratio = pmi / xp.where(norm > 0, norm, xp.ones_like(norm))
    S = xp.where(norm > 0, xp.clip(ratio, 0.0, 1.0), xp.zeros_like(ratio))
    return xp.where(_off_diagonal(S, xp=xp), S, xp.ones_like(S))


def unary_utility(
    kind: str = "coverage",
    *,
    S: Array | None = None,
    val_loss: Array | None = None,
    base_loss: Array | float = 0.0,
    mix: float = 0.5,
    standardize: bool = True,
) -> Array:
    """Unary utility ``u`` (SPEC 3.3 step 3; the paper's definition is UNKNOWN).

    - ``"gain"``: validation gain ``u_i = base_loss - val_loss_i`` (= -(L_val(M_i) - L_val(M_0))).
      For accuracies pass ``val_loss = -acc``. A scalar ``base_loss`` cancels in standardisation.
    - ``"coverage"``: ``u_i = (1/N) sum_j S_ij`` (representativeness).
    - ``"mix"``: ``mix * z(gain) + (1 - mix) * z(coverage)``, each part standardised first so
      ``mix`` is a true weight.

    The result is standardised (zero mean, unit population std; SPEC 3.3 step 3). If the spread
    is at roundoff level (all utilities equal) the result is all zeros instead of amplified noise.

    Args:
        kind: one of ``UTILITY_KINDS``.
        S: array ``(N, N)`` affinity, for ``"coverage"``/``"mix"``.
        val_loss: array ``(N,)``, each single-task model's validation loss (``"gain"``/``"mix"``).
        base_loss: scalar or array ``(N,)``, the base model's validation loss(es).
        mix: weight of the gain part in ``[0, 1]`` for ``"mix"``.
        standardize: False returns the raw utility (``"mix"`` still standardises its parts).

    Returns:
        Array ``(N,)`` floating.
    """
    _check_choice("utility kind", kind, UTILITY_KINDS)
    if not (isinstance(mix, (int, float)) and 0.0 <= mix <= 1.0):
        raise ValueError(f"mix must be a number in [0, 1], got {mix!r}")
    needs_s, needs_loss = kind in ("coverage", "mix"), kind in ("gain", "mix")
    if needs_s and S is None:
        raise ValueError(f"utility kind {kind!r} needs the affinity S")
    if needs_loss and val_loss is None:
        raise ValueError(f"utility kind {kind!r} needs val_loss (N,)")
    xp = namespace(S, val_loss, base_loss)
    if needs_s:
        n = _check_square("S", S)
        coverage = xp.mean(xp.astype(S, float_dtype(S, xp=xp)), axis=1)
    if needs_loss:
        val_loss = xp.astype(val_loss, float_dtype(val_loss, xp=xp))
        if val_loss.ndim != 1 or (needs_s and val_loss.shape[0] != n):
            raise ValueError(
                f"val_loss must have shape (N,) matching S, got {tuple(val_loss.shape)}"
            )
        gain = base_loss - val_loss
    if kind == "gain":
        u = gain
    elif kind == "coverage":
        u = coverage
    else:
        u = mix * _standardize(gain, xp=xp) + (1.0 - mix) * _standardize(coverage, xp=xp)
    return _standardize(u, xp=xp) if standardize else u


def _standardize(u: Array, *, xp: Any) -> Array:
    """Zero mean, unit std; zeros when the std is at roundoff level (SPEC 3.3 step 3)."""
    centred = u - xp.mean(u)
    std = xp.sqrt(xp.mean(centred * centred))
    floor = 8.0 * u.shape[0] * xp.finfo(u.dtype).eps * xp.max(xp.abs(u))
    ok = std > floor
    return xp.where(ok, centred / xp.where(ok, std, xp.ones_like(std)), xp.zeros_like(u))


# --------------------------------------------------------------------------- step 4: energy


def energy(p: Array, u: Array, A: Array, *, tau_e: float = 0.0) -> Array:
    """``E(p) = -u^T p + 1/2 p^T A p`` (SPEC 3.3 step 4), plus ``tau_e sum_i p_i log p_i``.

    Args:
        p: array ``(..., N)`` of mixtures.
        u: array ``(N,)`` utility.
        A: array ``(N, N)``, e.g. ``interaction_matrix(S, lam=..., mu=...)``.
        tau_e: entropy temperature of the mean-field objective (0: the plain energy).

    Returns:
        Array ``(...)`` in the dtype of ``p`` (``0 log 0 = 0``).
    """
    xp = namespace(p, u, A)
    value = -xp.matmul(p, u) + 0.5 * xp.sum(p * xp.matmul(p, A), axis=-1)
    if tau_e:
        safe = xp.where(p > 0, p, xp.ones_like(p))
        value = value + tau_e * xp.sum(p * xp.log(safe), axis=-1)
    return value


def default_mu(S: Any, lam: float = 1.0, *, margin: float = 1e-3) -> float:
    """Default ridge: ``mu = lam * max(1, |lambda_min(S - I)|) + margin`` (SPEC 3.4).

    ``lam |lambda_min(S - I)| + margin`` is the smallest ridge making ``A`` positive definite
    plus the margin. Taking at least ``lam`` (DERIVED) gives ``A = lam S + margin I`` whenever
    ``S`` is positive semi-definite, and then two exact duplicates (``S_ij = 1``, equal rows)
    split the weight one copy would get instead of doubling it: with ``mu = lam`` the energy
    sees only ``p_i + p_j``. Host side (numpy eigenvalues).
    """
    lam = _s.check_positive_scalar("lam", lam, allow_zero=True)
    margin = _s.check_positive_scalar("margin", margin, allow_zero=False)
    S = _s.as_affinity(S)
    return lam * max(1.0, -_s.min_eig(S - np.eye(S.shape[0]))) + margin


def interaction_matrix(S: Any, *, lam: float = 1.0, mu: float | None = None) -> np.ndarray:
    """``A = lam (S - I) + mu I`` as numpy float64 (SPEC 3.3 step 4), from the symmetrised ``S``.

    Args:
        S: array ``(N, N)`` affinity (only its symmetric part enters ``E``).
        lam: redundancy strength >= 0.
        mu: ridge >= 0; ``default_mu(S, lam)`` when None.

    Returns:
        numpy float64 array ``(N, N)``, symmetric.
    """
    lam = _s.check_positive_scalar("lam", lam, allow_zero=True)
    S = _s.as_affinity(S)
    mu = default_mu(S, lam) if mu is None else _s.check_positive_scalar("mu", mu, allow_zero=True)
    eye = np.eye(S.shape[0])
    return lam * (S - eye) + mu * eye


def kkt_residual(p: Any, u: Any, A: Any, *, support_tol: float = 1e-9) -> float:
    """Largest violation of the KKT conditions of ``min E`` on the simplex at ``p``.

    With ``g = A p - u`` and ``c`` the mean of ``g`` on the support ``{p_i > support_tol}``:
    ``max(|g_i - c|`` on the support, ``c - g_i`` off it (must be <= 0), ``|1^T p - 1|``,
    ``-min p)``. Zero (up to roundoff) exactly at the minimiser for positive definite ``A``.
    """
    A = _s.as_affinity(A, name="A")
    u = _s.as_utility(u, A.shape[0])
    p = np.asarray(to_numpy(p), dtype=np.float64)
    if p.shape != u.shape:
        raise ValueError(f"p must have shape {u.shape}, got {p.shape}")
    return _s.gradient_gap(p, u, A, support_tol)


def solve_mixture(
    u: Any,
    S: Any,
    *,
    lam: float = 1.0,
    mu: float | None = None,
    method: str = "active_set",
    tau_e: float = 0.1,
    damping: float | None = None,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> np.ndarray:
    """Mixture ``p`` minimising ``E(p) = -u^T p + 1/2 p^T A p`` on the simplex (SPEC 3.3 step 4).

    ``A = lam (S - I) + mu I``. Methods:

    - ``"active_set"``: the closed form ``p = A_FF^{-1}(u_F + nu 1)`` on a support ``F``, negative
      coordinates dropped and re-solved (SPEC), completed by a primal active-set phase that
      re-admits a dropped coordinate whose KKT multiplier is negative, so the result is the
      exact minimiser (see ``_taskpgm_solve.active_set``). Needs ``A`` positive definite.
    - ``"pgd"``: projected gradient with ``project_simplex``, step ``1/L`` (accelerated with
      restarts when ``A`` is positive definite; a stationary point otherwise).
    - ``"mean_field"``: damped fixed point of ``p = softmax((u - A p)/tau_e)``, the minimiser of
      ``E(p) + tau_e sum p log p`` (damped in log space, see ``_taskpgm_solve.mean_field``). With
      ``mu = 0`` the exponent is the SPEC's ``u_i - lam sum_{j != i} S_ij p_j``; the default
      ``mu`` keeps all three methods on the same ``E`` (mean field tends to the active-set
      solution as ``tau_e -> 0``).

    Host side: inputs of any namespace are copied to numpy float64; ``S`` is symmetrised.

    Args:
        u: array ``(N,)`` utility (e.g. ``unary_utility``).
        S: array ``(N, N)`` affinity.
        lam: redundancy strength >= 0 (SPEC 3.4 sweep {0.1, 0.5, 1, 2}).
        mu: ridge >= 0; ``default_mu(S, lam)`` when None.
        method: one of ``SOLVER_METHODS``.
        tau_e: entropy temperature > 0 (``"mean_field"`` only).
        damping: damping ``beta`` in (0, 1] (``"mean_field"`` only); None for the convergent
            ``tau_e / (tau_e + max|A_ij|)``.
        tol: stopping tolerance (KKT multipliers, iterate change, fixed-point residual).
        max_iter: iteration cap.

    Returns:
        numpy float64 array ``(N,)`` on the simplex.

    Raises:
        ValueError: bad shapes, non-finite inputs, ``lam < 0``, unknown ``method``, or (active set)
            a ``mu`` for which ``A`` is not positive definite.
    """
    _check_choice("method", method, SOLVER_METHODS)
    A = interaction_matrix(S, lam=lam, mu=mu)
    u = _s.as_utility(u, A.shape[0])
    tau_e = _s.check_positive_scalar("tau_e", tau_e, allow_zero=False)
    if damping is not None and not (isinstance(damping, (int, float)) and 0.0 < damping <= 1.0):
        raise ValueError(f"damping must be None or a number in (0, 1], got {damping!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if A.shape[0] == 1:
        return np.ones(1)
    lowest = _s.min_eig(A)
    if method == "active_set":
        if lowest <= 0.0:
            raise ValueError(
                f"mu={mu} makes A = lam (S - I) + mu I not positive definite (smallest eigenvalue "
                f"{lowest:.3g}); the closed form needs mu > {mu - lowest:.6g}, or mu=None for "
                f"default_mu(S, lam)"
            )
        return _s.active_set(A, u, tol=tol, max_iter=max_iter)
    if method == "pgd":
        return _s.pgd(A, u, tol=tol, max_iter=max_iter, momentum=lowest > 0.0)
    return _s.mean_field(A, u, tau_e=tau_e, damping=damping, tol=tol, max_iter=max_iter)


# --------------------------------------------------------------------------- step 5: budget


def greedy_subset(
    u: Any, S: Any, *, lam: float = 1.0, k: int, stop_early: bool = True
) -> list[int]:
    """Greedy maximisation of ``F(A) = sum_{i in A} u_i - lam sum_{i<j in A} S_ij``, ``|A| <= k``.

    SPEC 3.3 step 5. Each round adds the index of largest marginal gain
    ``u_i - lam sum_{j in A} S_ij`` (ties: lowest index). With ``stop_early`` (DERIVED default)
    it stops once the best gain is ``<= 0``, since adding more would lower ``F`` and the budget
    is an upper bound, but it always returns at least one index (an empty set is no mixture).
    An exact duplicate of a selected task gains at most ``u_i - lam`` (``S_ij = 1``), so it is
    never added once ``lam >= max u`` (standardised u: ``lam >= sqrt(N - 1)`` suffices). For
    ``S >= 0`` ``F`` has diminishing gains (submodular) but is not monotone; the SPEC's
    ``1 - e^{-gamma}`` bound (Das & Kempe 2011) assumes monotonicity, which holds only while
    gains stay positive, as ``stop_early`` keeps them.

    Args:
        u: array ``(N,)`` utility.
        S: array ``(N, N)`` affinity (symmetrised).
        lam: redundancy strength >= 0.
        k: budget, an int >= 1 (values above N select at most N).
        stop_early: stop when no index has a positive marginal gain.

    Returns:
        The selected indices in the order they were added.
    """
    lam = _s.check_positive_scalar("lam", lam, allow_zero=True)
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"budget k must be an int >= 1, got {k!r}")
    S = _s.as_affinity(S)
    u = _s.as_utility(u, S.shape[0])
    return _s.greedy(u, S, lam=lam, k=k, stop_early=stop_early)


def subset_mixture(
    indices: Any, n: int, weights: str = "uniform", u: Any = None, *, temperature: float = 1.0
) -> np.ndarray:
    """A mixture over a selected subset (SPEC 3.3 step 5), zero elsewhere.

    ``"uniform"``: ``1/|A|`` on the subset. ``"utility"`` (DERIVED): ``p_i ∝ exp(u_i /
    temperature)`` on the subset, the positive analogue of utility-proportional weights for
    standardised (partly negative) utilities.

    Args:
        indices: the selected indices (e.g. from ``greedy_subset``), distinct, in ``[0, n)``.
        n: number of tasks ``N``.
        weights: one of ``("uniform", "utility")``.
        u: array ``(N,)`` utility, required for ``"utility"``.
        temperature: > 0, for ``"utility"``.

    Returns:
        numpy float64 array ``(N,)`` on the simplex.
    """
    _check_choice("weights", weights, SUBSET_WEIGHTS)
    index = np.asarray(indices, dtype=np.int64).reshape(-1)
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if (
        index.size == 0
        or index.min() < 0
        or index.max() >= n
        or np.unique(index).size != index.size
    ):
        raise ValueError(
            f"indices must be distinct, non-empty and in [0, {n}), got {index.tolist()}"
        )
    p = np.zeros(n)
    if weights == "uniform":
        p[index] = 1.0 / index.size
        return p
    if u is None:
        raise ValueError("weights='utility' needs the utility u (N,)")
    temperature = _s.check_positive_scalar("temperature", temperature, allow_zero=False)
    z = _s.as_utility(u, n)[index] / temperature
    z = np.exp(z - z.max())
    p[index] = z / z.sum()
    return p


# --------------------------------------------------------------------------- convenience


class TaskPGMResult(NamedTuple):
    """Result of ``taskpgm_mixture`` (numpy float64, host side): what SPEC 3.5 says to store."""

    p: np.ndarray  # (N,) float64, on the simplex: the mixture to train with
    S: np.ndarray  # (N, N) float64 affinity used
    u: np.ndarray  # (N,) float64 utility used
    subset: np.ndarray | None  # (<= k,) int64 greedy selection in order, or None (continuous)


def taskpgm_mixture(
    D: Any = None,
    *,
    S: Any = None,
    u: Any = None,
    utility: str = "coverage",
    val_loss: Any = None,
    base_loss: Any = 0.0,
    mix: float = 0.5,
    affinity_kind: str = "linear",
    sigma: float | None = None,
    lam: float = 1.0,
    mu: float | None = None,
    method: str = "active_set",
    k: int | None = None,
    weights: str = "uniform",
    **solver_options: Any,
) -> TaskPGMResult:
    """SPEC 3.3 steps 2–5 in one call: ``D`` (or ``S``) and a utility to the mixture ``p``.

    Args:
        D: array ``(N, N)`` divergences (e.g. ``jsd_result``); exactly one of ``D`` and ``S``.
        S: array ``(N, N)`` affinity, used as is.
        u: array ``(N,)`` utility, used as is; otherwise ``unary_utility(utility, ...)``.
        utility: ``UTILITY_KINDS`` entry when ``u`` is None.
        val_loss: array ``(N,)`` for the ``"gain"``/``"mix"`` utilities.
        base_loss: scalar or ``(N,)`` base-model validation loss.
        mix: gain weight of the ``"mix"`` utility.
        affinity_kind: ``AFFINITY_KINDS`` entry, when ``D`` is given.
        sigma: bandwidth for ``affinity_kind="exp"``.
        lam: redundancy strength >= 0.
        mu: ridge; ``default_mu`` when None.
        method: ``SOLVER_METHODS`` entry (continuous mixture, when ``k`` is None).
        k: budget for the discrete variant: greedy subset, then ``subset_mixture(weights)``.
        weights: ``"uniform"`` or ``"utility"``, for ``k``.
        **solver_options: passed to ``solve_mixture`` (``tau_e``, ``damping``, ``tol``, ...).

    Returns:
        ``TaskPGMResult(p, S, u, subset)``.
    """
    if (D is None) == (S is None):
        raise ValueError("pass exactly one of D (divergences) and S (affinity)")
    if D is not None:
        D = np.asarray(to_numpy(D), dtype=np.float64)
        _check_square("D", D)
        S = affinity(D, affinity_kind, sigma)
    S = _s.as_affinity(S)
    if u is None:
        loss = None if val_loss is None else np.asarray(to_numpy(val_loss), dtype=np.float64)
        base = np.asarray(to_numpy(base_loss), dtype=np.float64)
        u = unary_utility(utility, S=S, val_loss=loss, base_loss=base, mix=mix)
    u = _s.as_utility(u, S.shape[0])
    if k is None:
        p = solve_mixture(u, S, lam=lam, mu=mu, method=method, **solver_options)
        return TaskPGMResult(p=p, S=S, u=u, subset=None)
    subset = greedy_subset(u, S, lam=lam, k=k)
    p = subset_mixture(subset, S.shape[0], weights, u)
    return TaskPGMResult(p=p, S=S, u=u, subset=np.asarray(subset, dtype=np.int64))
