"""Steps 2–3 of TaskPGM: behavioural divergences, the affinity ``S``, the utility ``u``.

See docs/methods.md, "TaskPGM: Steps".

Array API functions (any namespace, on device, jit-safe): the Jensen–Shannon divergence between two
models' predictive distributions, its streaming pairwise accumulator over probe batches, the
affinity maps (``1 - D/ln 2``, ``exp(-D/sigma)``, PMI) and the unary utilities. Everything public
here is re-exported by ``tandem_core.taskpgm`` (and ``tandem_core``); import it from there.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _taskpgm_solve as _s
from ._utils import Array, array_device, as_namespace, float_dtype, namespace

AFFINITY_KINDS = ("linear", "exp")
UTILITY_KINDS = ("gain", "coverage", "mix", "group_gain")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` listing ``allowed`` when ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")


def check_square(name: str, M: Any) -> int:
    """``N`` for a square ``(N, N)`` array; ``ValueError`` otherwise."""
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {tuple(M.shape)}")
    return M.shape[0]


def _check_top_k(top_k: Any) -> None:
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None (full vocabulary) or an int >= 1, got {top_k!r}")


# --------------------------------------------------------------------------- step 2: divergences


def jensen_shannon(
    logits_p: Array, logits_q: Array, *, axis: int = -1, top_k: int | None = None
) -> Array:
    """Jensen–Shannon divergence of the softmaxes of two logit arrays.

    Step 2 of docs/methods.md, "TaskPGM: Steps".

    ``JSD = 0.5 KL(P||M) + 0.5 KL(Q||M)``, ``M = (P + Q)/2``, in nats, in ``[0, ln 2]``: 0 for
    identical distributions (exactly), ``ln 2`` for disjoint supports. Computed from max-shifted
    log-softmaxes and a stable log-sum-exp for ``log M``, never ``P + Q`` in linear space; zero
    probabilities (including ``-inf`` logits) contribute exactly 0, never NaN. bf16/fp16 logits
    are computed in float32.

    Top-k truncation (our definition; docs/methods.md, "TaskPGM: Defaults"): keep the union of
    P's and Q's top-k tokens (every token whose logit is ``>=`` the k-th largest, so ties may
    keep more than k) and renormalise both distributions over that union. The result is
    symmetric, is exact when ``top_k >= V``, is 0 for identical inputs and ``ln 2`` when the two
    top-k sets carry disjoint mass. It costs a sort over the vocabulary; it saves memory only
    where a backend stores truncated distributions.

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
    """Streaming sums for the token-mean pairwise JSD matrix ``D``.

    Step 2 of docs/methods.md, "TaskPGM: Steps"; memory in "TaskPGM: Cost".
    """

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
    """Add one probe batch: the masked per-token JSD of every model pair.

    Only the ``N(N-1)/2`` pairs ``i < j`` are evaluated, one at a time (extra memory: a few
    ``(..., V)`` arrays), and mirrored into the symmetric sum. Sums and counts are token-weighted,
    so after several batches ``jsd_result`` is the token mean over their concatenation
    (``D_ij = E_{(x,t) in X} JSD``, step 2 of docs/methods.md, "TaskPGM: Steps"). Masked-out
    positions contribute nothing, even NaN logits there. Pure and jit-safe (``N`` and ``top_k``
    are static). For a large vocabulary keep ``N * B * T * V`` floats within memory by choosing
    the probe batch size (docs/methods.md, "TaskPGM: Cost").

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
    """Affinity (redundancy) ``S`` from divergences ``D``, ``S_ii = 1``.

    Step 2 of docs/methods.md, "TaskPGM: Steps". ``kind="linear"``: ``S = 1 - D / ln 2`` (in
    [0, 1] for D in [0, ln 2]). ``kind="exp"``: ``S = exp(-D / sigma)``; with ``sigma=None``
    sigma is the mean off-diagonal divergence (a DERIVED scale heuristic, computed on device).
    The full-vocabulary JSD is conditionally negative definite (its square root is a Hilbertian
    metric), and so is its token mean, so the exp affinity is positive semi-definite for every
    sigma (Schoenberg): the default ridge is then ``mu = lam`` (see ``default_mu``).

    Args:
        D: array ``(N, N)`` of divergences in nats, any real floating dtype.
        kind: one of ``AFFINITY_KINDS``.
        sigma: bandwidth > 0 for ``kind="exp"``; must be None for ``kind="linear"``.

    Returns:
        Array ``(N, N)`` in the dtype of ``D``.
    """
    check_choice("affinity kind", kind, AFFINITY_KINDS)
    if kind == "linear" and sigma is not None:
        raise ValueError("sigma applies only to kind='exp'; pass sigma=None for kind='linear'")
    if sigma is not None:
        _s.check_positive_scalar("sigma", sigma, allow_zero=False)
    xp = namespace(D)
    n = check_square("D", D)
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
    """PMI affinity: our definition; the paper's form is not known.

    The PMI variant of step 2 of docs/methods.md, "TaskPGM: Steps".

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
    n = check_square("cross_loss", cross_loss)
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
    """Unary utility ``u``: our definitions; the paper's is not known.

    Step 3 of docs/methods.md, "TaskPGM: Steps".

    - ``"gain"``: validation gain ``u_i = base_loss - val_loss_i`` (= -(L_val(M_i) - L_val(M_0))).
      For accuracies pass ``val_loss = -acc``. A scalar ``base_loss`` cancels in standardisation.
    - ``"coverage"``: ``u_i = (1/N) sum_j S_ij`` (representativeness).
    - ``"mix"``: ``mix * z(gain) + (1 - mix) * z(coverage)``, each part standardised first so
      ``mix`` is a true weight.
    - ``"group_gain"``: the gain on each probe group (a target task or stream), clipped at 0 and
      averaged over the ``G`` groups: ``u_i = (1/G) sum_g max(base_loss_g - val_loss_ig, 0)``,
      the target loss model i removes on the parts of the target it helps. ``"gain"`` on a
      multi-task target also charges a specialist for its confident errors on the other tasks,
      which the mixture's model does not make, and so ranks a model that predicts nothing (a
      noise task's) above every specialist when the base model is untrained
      (docs/methods.md, "TaskPGM: Measured"). With one group it is ``max(gain, 0)``.

    The result is standardised (zero mean, unit population std; step 3). If the spread
    is at roundoff level (all utilities equal) the result is all zeros instead of amplified noise.

    Args:
        kind: one of ``UTILITY_KINDS``.
        S: array ``(N, N)`` affinity, for ``"coverage"``/``"mix"``.
        val_loss: array ``(N,)``, each single-task model's validation loss (``"gain"``/``"mix"``);
            ``(N, G)`` or ``(N,)`` (one group) per probe group for ``"group_gain"``.
        base_loss: scalar or array ``(N,)``, the base model's validation loss(es); for
            ``"group_gain"`` a scalar or ``(G,)``, its loss on each probe group.
        mix: weight of the gain part in ``[0, 1]`` for ``"mix"``.
        standardize: False returns the raw utility (``"mix"`` still standardises its parts).

    Returns:
        Array ``(N,)`` floating.
    """
    check_choice("utility kind", kind, UTILITY_KINDS)
    if not (isinstance(mix, (int, float)) and 0.0 <= mix <= 1.0):
        raise ValueError(f"mix must be a number in [0, 1], got {mix!r}")
    needs_s, needs_loss = kind in ("coverage", "mix"), kind in ("gain", "mix", "group_gain")
    if needs_s and S is None:
        raise ValueError(f"utility kind {kind!r} needs the affinity S")
    if needs_loss and val_loss is None:
        raise ValueError(f"utility kind {kind!r} needs val_loss (N,)")
    xp = namespace(S, val_loss, base_loss)
    if needs_s:
        n = check_square("S", S)
        coverage = xp.mean(xp.astype(S, float_dtype(S, xp=xp)), axis=1)
    if kind == "group_gain":
        val_loss = xp.astype(val_loss, float_dtype(val_loss, xp=xp))
        gain = _group_gain(val_loss, base_loss, xp=xp)
    elif needs_loss:
        val_loss = xp.astype(val_loss, float_dtype(val_loss, xp=xp))
        if val_loss.ndim != 1 or (needs_s and val_loss.shape[0] != n):
            raise ValueError(
                f"val_loss must have shape (N,) matching S, got {tuple(val_loss.shape)}"
            )
        gain = base_loss - val_loss
    if kind in ("gain", "group_gain"):
        u = gain
    elif kind == "coverage":
        u = coverage
    else:
        u = mix * _standardize(gain, xp=xp) + (1.0 - mix) * _standardize(coverage, xp=xp)
    return _standardize(u, xp=xp) if standardize else u


def _group_gain(val_loss: Array, base_loss: Array | float, *, xp: Any) -> Array:
    """``(1/G) sum_g max(base_loss_g - val_loss_ig, 0)`` for ``val_loss`` ``(N, G)`` or ``(N,)``."""
    if val_loss.ndim not in (1, 2):
        raise ValueError(f"val_loss must have shape (N, G) or (N,), got {tuple(val_loss.shape)}")
    loss = val_loss if val_loss.ndim == 2 else xp.reshape(val_loss, (-1, 1))
    base = base_loss
    if getattr(base_loss, "ndim", 0) > 0:
        if tuple(base_loss.shape) != (loss.shape[1],):
            raise ValueError(
                f"base_loss must be a scalar or have shape ({loss.shape[1]},) (one per probe "
                f"group), got {tuple(base_loss.shape)}"
            )
        base = xp.reshape(xp.astype(base_loss, loss.dtype), (1, -1))
    gain = base - loss
    return xp.mean(xp.maximum(gain, xp.zeros_like(gain)), axis=1)


def _standardize(u: Array, *, xp: Any) -> Array:
    """Zero mean, unit std; zeros when the std is at roundoff level (TaskPGM step 3)."""
    centred = u - xp.mean(u)
    std = xp.sqrt(xp.mean(centred * centred))
    floor = 8.0 * u.shape[0] * xp.finfo(u.dtype).eps * xp.max(xp.abs(u))
    ok = std > floor
    return xp.where(ok, centred / xp.where(ok, std, xp.ones_like(std)), xp.zeros_like(u))
