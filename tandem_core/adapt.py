"""ADAPT: online per-sample loss reweighting by similarity to an anchor set (docs/methods.md).

Each sample's pooled last hidden state is compared with the centroid of the anchor (validation)
embeddings; a global sigmoid gate turns that cosine score into a weight in ``[0, 1]`` that scales
the sample's loss (a per-sample learning rate). Pure Array API functions, jit-safe; the weights are
constants for the optimiser, so backends wrap them in ``detach()`` / ``jax.lax.stop_gradient``.
Pooling and the anchor centroid live in ``_adapt_embed.py``, ADAPT-BM25 (host-side numpy) in
``_bm25.py``; this module re-exports them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ._adapt_embed import (
    COUNTINGS,
    AnchorSum,
    adapt_scores,
    anchor_centroid,
    anchor_sum,
    centroid_from_sum,
    check_rank,
    input_mask,
    l2_normalize,
    merge_anchor_sums,
    pool_hidden,
    position_weights,
)
from ._bm25 import bm25_scores, bm25_term_weights
from ._utils import Array, array_device, as_namespace, namespace, safe_increment
from .accounting import DomainStats, merge_stats

__all__ = [
    "AdaptState",
    "AdaptTransform",
    "AnchorSum",
    "WeightedStepInfo",
    "WeightSummary",
    "adapt",
    "input_mask",
    "adapt_scores",
    "adapt_weights",
    "anchor_centroid",
    "anchor_sum",
    "bm25_scores",
    "bm25_term_weights",
    "centroid_from_sum",
    "l2_normalize",
    "merge_anchor_sums",
    "merge_step_info",
    "pool_hidden",
    "position_weights",
    "standardize",
    "weight_summary",
    "weighted_loss",
]

NORMALIZERS = ("batch", "sum")


def _check_gate(tau: float, eps: float, clip: float | None) -> None:
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 (or None), got {clip}")


def adapt_weights(
    scores: Array,
    tau: float = 1.0,
    eps: float = 1e-8,
    clip: float | None = None,
    center: float | Array | None = None,
) -> Array:
    """Global sigmoid gate ``w = sigmoid((s - center) / max(tau, eps))``.

    See docs/methods.md, "ADAPT: Score and gate". Optional ``min(w, clip)`` (DataFlex option).
    ``center`` is NOT in the paper (see the numerics note there: anisotropic hidden states make
    every cosine positive); ``None`` is the paper's gate. The weights are constants for the
    optimiser: backends apply stop-gradient.

    Args:
        scores: floating array ``(B,)`` (or any shape).
        tau: temperature >= 0 (Python float); ``tau = 1`` maps ``[-1, 1]`` to ``[0.269, 0.731]``.
        eps: lower bound on ``tau`` (> 0).
        clip: optional upper bound > 0 on the weights.
        center: optional offset (float or 0-d / ``(B,)`` array) subtracted before the gate.

    Returns:
        Array of the shape and dtype of ``scores``, values in ``[0, 1]``.

    Raises:
        ValueError: if ``tau < 0``, ``eps <= 0`` or ``clip <= 0``.
    """
    _check_gate(tau, eps, clip)
    xp = namespace(scores, center)
    z = (scores if center is None else scores - center) / max(tau, eps)
    e = xp.exp(-xp.abs(z))  # overflow-free sigmoid
    w = xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return w if clip is None else xp.minimum(w, xp.full_like(w, clip))


def weighted_loss(per_sample_loss: Array, weights: Array, *, normalizer: str = "batch") -> Array:
    """ADAPT objective ``(1/Z) sum_i w_i l_i`` with ``Z = B`` or ``Z = sum_i w_i``.

    See docs/methods.md, "ADAPT: Objective". ``"batch"`` (our default; the paper leaves ``Z``
    open) keeps the absolute weights as learning-rate multipliers; ``"sum"`` renormalises per
    batch (0 when every weight is 0). Pass stop-gradient weights.

    Args:
        per_sample_loss: floating array ``(B,)``.
        weights: floating array ``(B,)``.
        normalizer: ``"batch"`` or ``"sum"``.

    Returns:
        0-d array of dtype ``result_type(per_sample_loss, weights)``.
    """
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normalizer {normalizer!r}; choose one of {NORMALIZERS}")
    xp = namespace(per_sample_loss, weights)
    check_rank("per_sample_loss", per_sample_loss, 1, "(B,)")
    if tuple(weights.shape) != tuple(per_sample_loss.shape):
        raise ValueError(f"weights shape {tuple(weights.shape)} != {tuple(per_sample_loss.shape)}")
    dtype = xp.result_type(per_sample_loss, weights)
    w = xp.astype(weights, dtype)
    total = xp.sum(w * xp.astype(per_sample_loss, dtype))
    if normalizer == "batch":
        return total / per_sample_loss.shape[0]
    z = xp.sum(w)
    return total / xp.where(z > 0, z, xp.ones_like(z))


class WeightSummary(NamedTuple):
    """Logging summary of weights (or scores): arrays, read them on a logging step only."""

    mean: Array  # () float: the "effective data ratio" (docs/methods.md, "ADAPT: Objective")
    quantiles: Array  # (Q,) float: at the requested levels (default 0.1, 0.5, 0.9)


def weight_summary(weights: Array, levels: Sequence[float] = (0.1, 0.5, 0.9)) -> WeightSummary:
    """Mean and quantiles (numpy's "linear" method) of a floating array, without host sync.

    Args:
        weights: non-empty floating array of any shape (flattened).
        levels: quantile levels in ``[0, 1]`` (Python floats).

    Returns:
        ``WeightSummary(mean (), quantiles (Q,))`` in the dtype of ``weights``.
    """
    xp = namespace(weights)
    flat = xp.sort(xp.reshape(weights, (-1,)))
    n = flat.shape[0]
    if n == 0 or any(not 0.0 <= q <= 1.0 for q in levels):
        raise ValueError(f"need a non-empty array and levels in [0, 1], got n={n}, {levels}")
    qs = []
    for q in levels:
        lo = int(q * (n - 1))
        hi = min(lo + 1, n - 1)
        qs.append(flat[lo] + (q * (n - 1) - lo) * (flat[hi] - flat[lo]))
    return WeightSummary(xp.mean(flat), xp.stack(qs))


def standardize(scores: Array) -> Array:
    """``(s - mean) / std`` (population std; 0 where std = 0): BM25 scores before the gate."""
    xp = namespace(scores)
    centred = scores - xp.mean(scores)
    std = xp.sqrt(xp.mean(centred * centred))
    return centred / xp.where(std > 0, std, xp.ones_like(std))


class WeightedStepInfo(NamedTuple):
    """What a per-sample weighted training step reports besides the loss statistics (on device)."""

    weights: Array  # (B,) float: w_i of this process's rows (stop-gradient), in batch order
    scores: Array  # (B,) float: s_i before the gate (cosine, or standardised BM25)
    per_domain: DomainStats  # sums of w_i over each domain's scored rows, and their counts


def merge_step_info(a: WeightedStepInfo | None, b: WeightedStepInfo) -> WeightedStepInfo:
    """Concatenate the rows of two ``WeightedStepInfo`` and add their per-domain sums."""
    if a is None:
        return b
    xp = namespace(a.weights, b.weights)
    return WeightedStepInfo(
        xp.concat([a.weights, b.weights]),
        xp.concat([a.scores, b.scores]),
        merge_stats(a.per_domain, b.per_domain),
    )


class AdaptState(NamedTuple):
    """ADAPT's anchor state: nothing is learned, only the anchor centroid.

    See docs/methods.md, "ADAPT: Anchor refresh".
    """

    centroid: Array  # (H,) float: mean unit anchor embedding (zero before the first refresh)
    last_refresh: Array  # () int32: step of the last refresh (-1: never)
    count: Array  # () int32: refreshes done (saturating)


class AdaptTransform(NamedTuple):
    """ADAPT as pure functions; ``refresh`` is ``update``. See ``adapt`` for the loop."""

    init: Callable[..., AdaptState]
    update: Callable[..., AdaptState]
    weights: Callable[..., Array]
    scores: Callable[..., Array]
    gate: Callable[[Array], Array]
    needs_refresh: Callable[[int], bool]

    @property
    def refresh(self) -> Callable[..., AdaptState]:
        """Alias of ``update``: ``refresh(state, anchors, step) -> AdaptState``."""
        return self.update


def adapt(
    tau: float = 1.0,
    refresh_every: int = 50,
    clip: float | None = None,
    eps: float = 1e-8,
    *,
    center: float | None = None,
    counting: str = "valid",
) -> AdaptTransform:
    """ADAPT reweighting as an ``init`` / ``update`` (``refresh``) transform.

    ``init(hidden_size, *, xp=None, dtype=None, device=None)`` gives a zero centroid (weights 0.5
    until the first refresh). ``refresh(state, anchors, step)`` takes pooled anchor embeddings
    ``(V, H)``, a centroid ``(H,)`` or an ``AnchorSum``, computed with the CURRENT model under
    no-grad. ``weights(state, hidden (B, T, H), mask (B, T)) -> (B,)``; ``scores`` is the same
    before the gate and ``gate(scores)`` applies it. ``needs_refresh(step)`` is a host-side check
    on a Python int, true at step 0 and every ``refresh_every`` steps. A training loop
    (docs/methods.md, "ADAPT: Objective")::

        state = t.init(hidden_size, xp=xp)
        for step, batch in enumerate(batches):
            if t.needs_refresh(step):  # forward over the anchors, no grad, current model
                state = t.refresh(state, pool_hidden(anchor_hidden, anchor_mask), step)
            w = stop_gradient(t.weights(state, hidden, batch_mask))  # training forward's states
            loss = weighted_loss(per_sample_loss, w)  # Z = B

    Args:
        tau: gate temperature >= 0 (DataFlex default 1.0; paper value unknown).
        refresh_every: ``R`` >= 1, steps between anchor refreshes (DataFlex default 50).
        clip: optional weight cap > 0.
        eps: lower bound on ``tau``.
        center: optional score offset before the gate (not in the paper).
        counting: position numbering for pooling (``"valid"`` or ``"absolute"``).

    Returns:
        An ``AdaptTransform``.

    Examples:
        >>> import numpy as np
        >>> t = adapt(tau=0.1, refresh_every=2)
        >>> state = t.init(4)
        >>> hidden, mask = np.ones((3, 5, 4)), np.ones((3, 5), dtype=bool)
        >>> t.weights(state, hidden, mask).tolist()  # before any refresh
        [0.5, 0.5, 0.5]
        >>> [step for step in range(5) if t.needs_refresh(step)]
        [0, 2, 4]
        >>> state = t.refresh(state, np.eye(4)[:1], step=0)
        >>> t.weights(state, hidden, mask).round(4).tolist()  # cos = 0.5, sigmoid(5)
        [0.9933, 0.9933, 0.9933]
    """
    _check_gate(tau, eps, clip)
    if isinstance(refresh_every, bool) or operator.index(refresh_every) < 1:
        raise ValueError(f"refresh_every must be an int >= 1, got {refresh_every}")
    if counting not in COUNTINGS:
        raise ValueError(f"unknown counting {counting!r}; choose one of {COUNTINGS}")

    def init(hidden_size: int, *, xp: Any = None, dtype: Any = None, device: Any = None):
        if operator.index(hidden_size) < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        xp = as_namespace(xp)
        dtype = xp.asarray(0.0).dtype if dtype is None else dtype
        centroid = xp.zeros((hidden_size,), dtype=dtype, device=device)
        dev = array_device(centroid)
        return AdaptState(
            centroid,
            xp.full((), -1, dtype=xp.int32, device=dev),
            xp.zeros((), dtype=xp.int32, device=dev),
        )

    def update(state: AdaptState, anchors: Any, step: int | Array) -> AdaptState:
        if isinstance(anchors, AnchorSum):
            centroid = centroid_from_sum(anchors)
        else:
            centroid = anchor_centroid(anchors) if anchors.ndim == 2 else anchors
        if tuple(centroid.shape) != tuple(state.centroid.shape):
            raise ValueError(
                f"anchors give a centroid of shape {tuple(centroid.shape)}, the state holds "
                f"{tuple(state.centroid.shape)}: pass (V, H) embeddings or an (H,) centroid"
            )
        xp = namespace(state.centroid, centroid)
        dev = array_device(state.centroid)
        return AdaptState(
            xp.astype(centroid, state.centroid.dtype),
            xp.astype(xp.asarray(step, device=dev), xp.int32),
            safe_increment(state.count, xp=xp),
        )

    def scores(state: AdaptState, hidden: Array, mask: Array | None = None) -> Array:
        return adapt_scores(pool_hidden(hidden, mask, counting=counting), state.centroid)

    def gate(s: Array) -> Array:
        return adapt_weights(s, tau, eps, clip, center)

    def weights(state: AdaptState, hidden: Array, mask: Array | None = None) -> Array:
        return gate(scores(state, hidden, mask))

    def needs_refresh(step: int) -> bool:
        return operator.index(step) % refresh_every == 0

    return AdaptTransform(init, update, weights, scores, gate, needs_refresh)
