"""TaskPGM: task mixtures from behavioural affinities by energy minimisation.

Pipeline (docs/methods.md, "TaskPGM: Steps"): pairwise Jensen–Shannon divergences ``D``
between single-task models' predictive distributions (step 2, device side, streamed over probe
batches), an affinity ``S`` and a unary utility ``u`` (steps 2–3), then the mixture ``p``
minimising

    E(p) = -u^T p + 1/2 p^T A p,   A = lam (S - I) + mu I,   p on the simplex     (step 4)

or a budgeted subset by greedy maximisation of ``F`` (step 5). Divergences, affinities and
utilities are Array API functions (any namespace, jit-safe), defined in
``_taskpgm_divergence`` and re-exported here; the solvers are host-side numpy float64 code for
small ``N``. Every step is our reconstruction, not the paper's equations (docs/methods.md,
"TaskPGM").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _taskpgm_solve as _s
from ._taskpgm_divergence import AFFINITY_KINDS as AFFINITY_KINDS
from ._taskpgm_divergence import UTILITY_KINDS as UTILITY_KINDS
from ._taskpgm_divergence import PairwiseJSD as PairwiseJSD
from ._taskpgm_divergence import affinity as affinity
from ._taskpgm_divergence import check_choice as _check_choice
from ._taskpgm_divergence import check_square as _check_square
from ._taskpgm_divergence import jensen_shannon as jensen_shannon
from ._taskpgm_divergence import jsd_init as jsd_init
from ._taskpgm_divergence import jsd_result as jsd_result
from ._taskpgm_divergence import jsd_update as jsd_update
from ._taskpgm_divergence import pmi_affinity as pmi_affinity
from ._taskpgm_divergence import unary_utility as unary_utility
from ._utils import Array, namespace, to_numpy

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

SOLVER_METHODS = _s.METHODS
SUBSET_WEIGHTS = ("uniform", "utility")


# --------------------------------------------------------------------------- step 4: energy


def energy(p: Array, u: Array, A: Array, *, tau_e: float = 0.0) -> Array:
    """``E(p) = -u^T p + 1/2 p^T A p``, plus ``tau_e sum_i p_i log p_i``.

    Step 4 of docs/methods.md, "TaskPGM: Steps".

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
    """Default ridge: ``mu = lam * max(1, |lambda_min(S - I)|) + margin``.

    See docs/methods.md, "TaskPGM: Energy and solvers" (ridge).

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
    """``A = lam (S - I) + mu I`` as numpy float64, from the symmetrised ``S``.

    Step 4 of docs/methods.md, "TaskPGM: Steps".

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
    """Mixture ``p`` minimising ``E(p) = -u^T p + 1/2 p^T A p`` on the simplex.

    ``A = lam (S - I) + mu I`` (docs/methods.md, "TaskPGM: Energy and solvers"). Methods:

    - ``"active_set"``: the closed form ``p = A_FF^{-1}(u_F + nu 1)`` on a support ``F``, negative
      coordinates dropped and re-solved (phase 1), completed by a primal active-set phase that
      re-admits a dropped coordinate whose KKT multiplier is negative, so the result is the
      exact minimiser (see ``_taskpgm_solve.active_set``). Needs ``A`` positive definite.
    - ``"pgd"``: projected gradient with ``project_simplex``, step ``1/L`` (accelerated with
      restarts when ``A`` is positive definite; a stationary point otherwise).
    - ``"mean_field"``: damped fixed point of ``p = softmax((u - A p)/tau_e)``, the minimiser of
      ``E(p) + tau_e sum p log p`` (damped in log space, see ``_taskpgm_solve.mean_field``). With
      ``mu = 0`` the exponent is ``u_i - lam sum_{j != i} S_ij p_j``; the default
      ``mu`` keeps all three methods on the same ``E`` (mean field tends to the active-set
      solution as ``tau_e -> 0``).

    Host side: inputs of any namespace are copied to numpy float64; ``S`` is symmetrised.

    Args:
        u: array ``(N,)`` utility (e.g. ``unary_utility``).
        S: array ``(N, N)`` affinity.
        lam: redundancy strength >= 0 (a sweep over {0.1, 0.5, 1, 2} is a reasonable start).
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

    Step 5 of docs/methods.md, "TaskPGM: Steps". Each round adds the index of largest marginal gain
    ``u_i - lam sum_{j in A} S_ij`` (ties: lowest index). With ``stop_early`` (DERIVED default)
    it stops once the best gain is ``<= 0``, since adding more would lower ``F`` and the budget
    is an upper bound, but it always returns at least one index (an empty set is no mixture).
    An exact duplicate of a selected task gains at most ``u_i - lam`` (``S_ij = 1``), so it is
    never added once ``lam >= max u`` (standardised u: ``lam >= sqrt(N - 1)`` suffices). For
    ``S >= 0`` ``F`` has diminishing gains (submodular) but is not monotone; the greedy
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
    """A mixture over a selected subset, zero elsewhere.

    Step 5 of docs/methods.md, "TaskPGM: Steps". ``"uniform"``: ``1/|A|`` on the subset.
    ``"utility"`` (DERIVED): ``p_i ∝ exp(u_i / temperature)`` on the subset, the positive
    analogue of utility-proportional weights for standardised (partly negative) utilities.

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
    """Result of ``taskpgm_mixture`` (numpy float64, host side): what a TaskPGM run keeps.

    See step 6 of docs/methods.md, "TaskPGM: Steps".
    """

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
    """Steps 2–5 of TaskPGM in one call: ``D`` (or ``S``) and a utility to the mixture ``p``.

    See docs/methods.md, "TaskPGM: Steps".

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
