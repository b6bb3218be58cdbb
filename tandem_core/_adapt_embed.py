"""ADAPT embeddings: position-weighted pooling, unit rows, anchor centroid, scores.

See docs/methods.md, "ADAPT: Score and gate". Pure Array API functions, jit-safe. Public names
are re-exported by ``tandem_core.adapt``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._utils import Array, array_device, float_dtype, namespace

__all__ = [
    "COUNTINGS",
    "AnchorSum",
    "input_mask",
    "adapt_scores",
    "anchor_centroid",
    "anchor_sum",
    "centroid_from_sum",
    "check_rank",
    "l2_normalize",
    "merge_anchor_sums",
    "pool_hidden",
    "position_weights",
]

COUNTINGS = ("valid", "absolute")


def check_rank(name: str, x: Array, ndim: int, layout: str) -> None:
    """Raise ``ValueError`` naming ``name`` and its expected layout unless ``x.ndim == ndim``."""
    if x.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} {layout}, got shape {tuple(x.shape)}")


def _cumsum(x: Array, *, xp: Any) -> Array:
    """Cumulative sum over the last axis, keeping the dtype.

    The native ``cumsum`` where the namespace has one: array-api-compat's ``cumulative_sum``
    wrapper re-inspects the namespace through ``lru_cache``, which ``torch.compile`` warns about.
    """
    native = getattr(xp, "cumsum", None)
    if native is None:
        return xp.cumulative_sum(x, axis=-1, dtype=x.dtype)
    return native(x, axis=-1, dtype=x.dtype)


def input_mask(labels: Array, ignore_index: int = -100) -> Array:
    """Valid input tokens of right-padded rows: up to one past the last scored label.

    The batch contract has no attention mask: padding is ``labels == ignore_index`` at the end of
    a row (``windows``) and the token before the first padded label is still a real input
    (its label is the padding). Prompt tokens with ignored labels before a scored answer count
    as valid, as in an attention mask. Left padding is not recognised: pass your own mask.

    Args:
        labels: integer array ``(B, T)``.
        ignore_index: the label of positions that are not scored.

    Returns:
        bool array ``(B, T)``; all ``False`` for a row without any scored label.
    """
    xp = namespace(labels)
    check_rank("labels", labels, 2, "(B, T)")
    scored = xp.astype(labels != ignore_index, xp.int32)
    # suffix[t] = scored labels at positions >= t; token t is valid iff suffix[t - 1] > 0
    suffix = xp.flip(_cumsum(xp.flip(scored, axis=-1), xp=xp), axis=-1)
    return xp.concat([suffix[:, :1], suffix[:, :-1]], axis=-1) > 0


def position_weights(mask: Array, *, dtype: Any = None, counting: str = "valid") -> Array:
    """Position weights ``omega_i = i / sum_j j`` over the valid tokens of each row.

    See docs/methods.md, "ADAPT: Score and gate".

    ``counting="valid"`` numbers the valid tokens ``1..n`` (the paper's ``i``, whatever the padding
    side); ``"absolute"`` is DataFlex's ``arange(1..T) * mask``. Both agree for right padding.
    Positions are counted in int32 and divided in float32 (float64 if requested), so long rows stay
    exact in low precision. A row without valid tokens gets all-zero weights.

    Args:
        mask: array ``(B, T)``, bool or numeric (nonzero = valid token).
        dtype: floating dtype of the result; default: the mask's if floating, else the default.
        counting: ``"valid"`` or ``"absolute"``.

    Returns:
        Array ``(B, T)``; each row sums to 1 (or 0 if it has no valid token).
    """
    xp = namespace(mask)
    check_rank("mask", mask, 2, "(B, T)")
    if counting not in COUNTINGS:
        raise ValueError(f"unknown counting {counting!r}; choose one of {COUNTINGS}")
    dtype = float_dtype(mask, xp=xp) if dtype is None else dtype
    valid = xp.astype(mask if xp.isdtype(mask.dtype, "bool") else mask != 0, xp.int32)
    if counting == "valid":
        pos = _cumsum(valid, xp=xp) * valid
    else:
        ramp = xp.arange(1, mask.shape[-1] + 1, dtype=xp.int32, device=array_device(mask))
        pos = ramp[None, :] * valid
    pos = xp.astype(pos, xp.float64 if dtype == xp.float64 else xp.float32)
    total = xp.sum(pos, axis=-1, keepdims=True)
    return xp.astype(pos / xp.where(total > 0, total, xp.ones_like(total)), dtype)


def pool_hidden(hidden: Array, mask: Array | None = None, *, counting: str = "valid") -> Array:
    """Position-weighted average pooling ``phi(x) = sum_i omega_i h_i``.

    See docs/methods.md, "ADAPT: Score and gate".

    Args:
        hidden: array ``(B, T, H)``, floating: last-layer hidden states (detached by the backend).
        mask: array ``(B, T)`` of valid tokens (bool or 0/1); ``None``: every token is valid.
        counting: position numbering, see ``position_weights``.

    Returns:
        Array ``(B, H)`` in the dtype of ``hidden``; all-padding rows are zero.

    Raises:
        ValueError: if ``hidden`` is not rank 3 or ``mask`` is not ``hidden.shape[:2]``.
    """
    xp = namespace(hidden, mask)
    check_rank("hidden", hidden, 3, "(B, T, H)")
    if mask is None:
        mask = xp.ones(hidden.shape[:2], dtype=xp.bool, device=array_device(hidden))
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match hidden (B, T) = "
            f"{tuple(hidden.shape[:2])}"
        )
    omega = position_weights(mask, dtype=hidden.dtype, counting=counting)
    return xp.matmul(omega[:, None, :], hidden)[:, 0, :]


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Unit rows ``x / max(||x||, eps)`` along the last axis (``phi_hat``).

    ``phi_hat`` of docs/methods.md, "ADAPT: Score and gate".

    The norm is taken on ``x / max|x|``, so float16 inputs cannot overflow; zero rows stay zero.

    Args:
        x: array ``(..., H)``, floating.
        eps: lower bound on the norm.

    Returns:
        Array of the shape and dtype of ``x``.
    """
    xp = namespace(x)
    scale = xp.max(xp.abs(x), axis=-1, keepdims=True)
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))
    norm = xp.sqrt(xp.sum((x / safe) ** 2, axis=-1, keepdims=True)) * safe
    return x / xp.where(norm > eps, norm, xp.full_like(norm, eps))


class AnchorSum(NamedTuple):
    """Streaming anchor centroid: sum of unit anchor embeddings and their count."""

    total: Array  # (H,) float: sum of phi_hat(v) over the anchors seen
    count: Array  # () float: number of anchors seen


def anchor_sum(embeddings: Array, mask: Array | None = None) -> AnchorSum:
    """The ``AnchorSum`` of one batch of pooled anchor embeddings (normalised here).

    Args:
        embeddings: array ``(V, H)`` of pooled anchor embeddings ``phi(v)``.
        mask: optional bool array ``(V,)``: ``False`` rows (padding) are left out.

    Returns:
        ``AnchorSum(total (H,), count ())`` in the dtype of ``embeddings``.
    """
    xp = namespace(embeddings, mask)
    check_rank("embeddings", embeddings, 2, "(V, H)")
    unit = l2_normalize(embeddings)
    if mask is None:
        keep = xp.ones((embeddings.shape[0], 1), dtype=unit.dtype, device=array_device(unit))
    elif tuple(mask.shape) != tuple(embeddings.shape[:1]):
        raise ValueError(f"mask shape {tuple(mask.shape)} != (V,) = {tuple(embeddings.shape[:1])}")
    else:
        keep = xp.astype(mask, unit.dtype)[:, None]
    return AnchorSum(xp.sum(unit * keep, axis=0), xp.sum(keep))


def merge_anchor_sums(a: AnchorSum, b: AnchorSum) -> AnchorSum:
    """Add two ``AnchorSum`` (anchor batches or ranks; an all-reduce sum does the same)."""
    return AnchorSum(a.total + b.total, a.count + b.count)


def centroid_from_sum(acc: AnchorSum) -> Array:
    """Centroid ``c = total / count`` ``(H,)``; zero while no anchor was seen."""
    xp = namespace(acc.total, acc.count)
    count = xp.astype(acc.count, acc.total.dtype)
    return acc.total / xp.where(count > 0, count, xp.ones_like(count))


def anchor_centroid(embeddings: Array, mask: Array | None = None) -> Array:
    """Anchor centroid ``c = (1/|V|) sum_v phi_hat(v)`` (the O(H) shortcut).

    See docs/methods.md, "ADAPT: Score and gate".

    ``mean_v cos(phi(x), phi(v)) = phi_hat(x) · c`` exactly, so ``c`` replaces the ``(V, H)``
    anchor matrix. For anchors processed in batches use ``anchor_sum`` / ``merge_anchor_sums`` /
    ``centroid_from_sum``, which give the same result.

    Args:
        embeddings: array ``(V, H)`` of pooled anchor embeddings (not necessarily normalised).
        mask: optional bool array ``(V,)`` of real (non-padding) anchors.

    Returns:
        Array ``(H,)`` in the dtype of ``embeddings``, norm <= 1.
    """
    return centroid_from_sum(anchor_sum(embeddings, mask))


def adapt_scores(phi: Array, centroid: Array) -> Array:
    """ADAPT similarity ``s(x) = phi_hat(x) · c`` = mean cosine to the anchors.

    See docs/methods.md, "ADAPT: Score and gate".

    Args:
        phi: array ``(B, H)`` of pooled embeddings (normalised here).
        centroid: array ``(H,)`` from ``anchor_centroid``.

    Returns:
        Array ``(B,)`` in ``[-1, 1]``, dtype ``result_type(phi, centroid)``.
    """
    xp = namespace(phi, centroid)
    check_rank("phi", phi, 2, "(B, H)")
    check_rank("centroid", centroid, 1, "(H,)")
    if phi.shape[-1] != centroid.shape[0]:
        raise ValueError(f"phi has H={phi.shape[-1]}, centroid has H={centroid.shape[0]}")
    dtype = xp.result_type(phi, centroid)
    return xp.matmul(l2_normalize(xp.astype(phi, dtype)), xp.astype(centroid, dtype))
