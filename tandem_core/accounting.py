"""Twin loss accounting: per-domain sums and counts, merging, means, missing domains, Delta.

Statistics stay arrays of the caller's namespace end to end (no host round-trip), so a backend can
accumulate them on device for a whole episode and read them only on a logging step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ._utils import (
    Array,
    array_device,
    float_dtype,
    is_numpy,
    is_traced,
    namespace,
    to_numpy,
    tree_map,
)

__all__ = [
    "MISSING_POLICIES",
    "DomainStats",
    "TwinStats",
    "all_reduce_stats",
    "check_stats",
    "domain_means",
    "domain_stats",
    "excess_loss_stats",
    "fill_missing",
    "merge_stats",
    "pack_stats",
    "segment_sum_onehot",
    "stats_to_numpy",
    "twin_delta",
    "unpack_stats",
    "weighted_objective",
]

MISSING_POLICIES = ("carry", "zero", "skip")
SegmentSum = Callable[[Array, Array, int], Array]


class DomainStats(NamedTuple):
    """Per-domain sums and counts of a per-sample statistic (losses, excess losses, scores)."""

    sums: Array  # (..., M) float: sum of the statistic over each domain's samples
    counts: Array  # (..., M) float: number (or token weight) of each domain's samples
    invalid: Array | None = None  # (...,) float: samples with a domain id outside [0, M), dropped


class TwinStats(NamedTuple):
    """The two twins' statistics on the SAME samples: proxy u and reference w (TANDEM).

    See docs/methods.md, "TANDEM: Update" and "Twin loss accounting".
    """

    proxy: DomainStats
    reference: DomainStats


def segment_sum_onehot(data: Array, segment_ids: Array, num_segments: int) -> Array:
    """Segment sum through a one-hot matrix product; works in any Array API namespace and under jit.

    Costs ``O(B * M)`` memory: backends pass their native segment sum for large ``M``.

    Args:
        data: array ``(B,)`` or ``(B, C)``.
        segment_ids: integer array ``(B,)`` with values in ``[0, num_segments)``.
        num_segments: ``M``.

    Returns:
        Array ``(M,)`` or ``(M, C)`` in the dtype of ``data``.
    """
    xp = namespace(data, segment_ids)
    ids = segment_ids
    onehot = xp.astype(
        ids[:, None] == xp.arange(num_segments, dtype=ids.dtype)[None, :], data.dtype
    )
    return xp.matmul(xp.permute_dims(onehot, (1, 0)), data)


def _segment_sum_numpy(data: Any, segment_ids: Any, num_segments: int) -> Any:
    out = np.zeros((num_segments,) + data.shape[1:], dtype=data.dtype)
    np.add.at(out, segment_ids, data)
    return out


def _check_ids(domain_ids: Array, num_domains: int) -> None:
    ids = to_numpy(domain_ids)
    bad = np.flatnonzero((ids < 0) | (ids >= num_domains))
    if bad.size:
        raise ValueError(
            f"domain id {int(ids[bad[0]])} at position {int(bad[0])} is outside [0, {num_domains}) "
            f"(num_domains={num_domains}; {bad.size} sample(s) out of range)"
        )


def domain_stats(
    values: Array,
    domain_ids: Array,
    num_domains: int,
    *,
    counts: Array | None = None,
    checked: bool | None = None,
    segment_sum: SegmentSum | None = None,
) -> DomainStats:
    """Per-domain sums and counts of per-sample ``values``.

    See docs/methods.md, "Twin loss accounting".

    Out-of-range ids never corrupt a domain: they are dropped and counted in ``invalid``. With
    ``checked`` (the default whenever the arrays are concrete), they raise instead; under
    ``jax.jit`` or ``torch.compile`` ids cannot be read, so nothing is raised and ``invalid`` tells.

    Args:
        values: float array ``(B,)``, e.g. per-sample token-mean losses (or token sums).
        domain_ids: integer array ``(B,)`` in ``[0, num_domains)``.
        num_domains: ``M``.
        counts: optional array ``(B,)``: what each sample adds to its domain's count (default 1;
            token counts give per-token means when ``values`` are token sums).
        checked: raise ``ValueError`` naming the first out-of-range id. ``None``: check unless
            traced. Checking reads the ids on the host (a device sync): keep it out of hot loops.
        segment_sum: ``f(data (B, C), ids (B,), M) -> (M, C)``; default: ``np.add.at`` for numpy
            and a one-hot product elsewhere. Backends pass their native one.

    Returns:
        ``DomainStats(sums (M,), counts (M,), invalid ())`` in the float dtype of ``values``.

    Raises:
        ValueError: on shape mismatch, non-integer ids or (when checked) an out-of-range id.
    """
    xp = namespace(values, domain_ids, counts)
    if values.ndim != 1 or domain_ids.shape != values.shape:
        raise ValueError(
            f"values and domain_ids must both have shape (B,); got {tuple(values.shape)} and "
            f"{tuple(domain_ids.shape)}"
        )
    if not xp.isdtype(domain_ids.dtype, "integral"):
        raise ValueError(f"domain_ids must be integers, got dtype {domain_ids.dtype}")
    if checked or (checked is None and not is_traced(domain_ids)):
        if is_traced(domain_ids):
            raise ValueError(
                "checked=True needs concrete ids; under jit use checked=False and `invalid`"
            )
        _check_ids(domain_ids, num_domains)
    dtype = float_dtype(values, xp=xp)
    values = xp.astype(values, dtype)
    weight = xp.ones_like(values) if counts is None else xp.astype(counts, dtype)
    valid = (domain_ids >= 0) & (domain_ids < num_domains)
    zero = xp.zeros_like(values)
    data = xp.stack([xp.where(valid, values, zero), xp.where(valid, weight, zero)], axis=1)
    ids = xp.where(valid, domain_ids, xp.zeros_like(domain_ids))
    if segment_sum is None:
        segment_sum = _segment_sum_numpy if is_numpy(values) else segment_sum_onehot
    summed = segment_sum(data, ids, num_domains)
    invalid = xp.sum(xp.astype(~valid, dtype))
    return DomainStats(sums=summed[:, 0], counts=summed[:, 1], invalid=invalid)


def excess_loss_stats(
    proxy_losses: Array,
    reference_losses: Array,
    token_mask: Array,
    domain_ids: Array,
    num_domains: int,
    **kwargs: Any,
) -> DomainStats:
    """DoReMi's per-domain statistic: the clipped per-token excess loss ``max(l_proxy - l_ref, 0)``.

    The sums are over tokens and the counts are token counts, so ``domain_means`` gives DoReMi's
    ``s_m`` (mean over domain-m tokens; docs/methods.md, "DoReMi: Update").

    Args:
        proxy_losses: float ``(B, T)`` per-token losses of the proxy.
        reference_losses: float ``(B, T)`` per-token losses of the frozen reference.
        token_mask: bool or float ``(B, T)``: which tokens count (non-ignored labels).
        domain_ids: integer ``(B,)``.
        num_domains: ``M``.
        **kwargs: passed to ``domain_stats`` (``checked``, ``segment_sum``).

    Returns:
        ``DomainStats`` with arrays ``(M,)``.
    """
    xp = namespace(proxy_losses, reference_losses)
    keep = token_mask if token_mask.dtype == xp.bool else token_mask != 0
    weight = xp.astype(keep, proxy_losses.dtype)
    zero = xp.zeros_like(proxy_losses)
    excess = xp.where(keep, xp.maximum(proxy_losses - reference_losses, zero), zero)
    return domain_stats(
        xp.sum(excess, axis=1), domain_ids, num_domains, counts=xp.sum(weight, axis=1), **kwargs
    )


def _invalid(stats: DomainStats, *, xp: Any) -> Array:
    if stats.invalid is not None:
        return stats.invalid
    return xp.zeros(stats.sums.shape[:-1], dtype=stats.sums.dtype, device=array_device(stats.sums))


def _check_pair(stats: DomainStats, name: str) -> int:
    """Static check of one ``DomainStats``: sums and counts of one shape ``(..., M)``; returns M."""
    sums, counts = stats.sums, stats.counts
    if sums.ndim < 1 or tuple(sums.shape) != tuple(counts.shape):
        raise ValueError(
            f"{name}: sums and counts must have the same shape (..., M), got sums "
            f"{tuple(sums.shape)} and counts {tuple(counts.shape)}"
        )
    return sums.shape[-1]


def _check_twins(stats: TwinStats) -> int:
    m_u = _check_pair(stats.proxy, "TwinStats.proxy")
    m_w = _check_pair(stats.reference, "TwinStats.reference")
    if tuple(stats.proxy.sums.shape) != tuple(stats.reference.sums.shape):
        raise ValueError(
            f"TwinStats: proxy covers {m_u} domains (shape {tuple(stats.proxy.sums.shape)}) but "
            f"reference covers {m_w} (shape {tuple(stats.reference.sums.shape)}): measure both "
            "twins on the same M domains"
        )
    return m_u


def check_stats(stats: Any, num_domains: int | None = None, *, checked: bool | None = None) -> None:
    """Raise ``ValueError`` on statistics that no update can use, naming what is wrong.

    Shapes are always checked (they are static, also under jit): a ``DomainStats``' sums and
    counts share one shape ``(..., M)``, a ``TwinStats``' proxy and reference have the same
    shape, and ``M == num_domains`` when given. With ``checked`` the counts' values are read too:
    a negative count is a bug of the caller (counts are sample or token numbers), not a training
    fault, so it raises. A non-finite sum or count is left to the transforms' guard.

    Args:
        stats: ``DomainStats``, ``TwinStats``, or anything else (an array, ``None``: ignored).
        num_domains: the mixture's ``M``, or ``None``.
        checked: read the counts on the host (a device sync). ``None``: check unless traced.

    Raises:
        ValueError: mismatched shapes, a wrong number of domains, or (when checked) a negative
            count; also ``checked=True`` on traced statistics.
    """
    if isinstance(stats, TwinStats):
        m, parts = _check_twins(stats), (("proxy", stats.proxy), ("reference", stats.reference))
    elif isinstance(stats, DomainStats):
        m, parts = _check_pair(stats, "DomainStats"), (("", stats),)
    else:
        return
    if num_domains is not None and m != num_domains:
        raise ValueError(
            f"statistics cover {m} domains, the mixture has {num_domains}: check num_domains "
            "against the data"
        )
    for name, part in parts:
        traced = is_traced(part.counts)
        if checked and traced:
            raise ValueError("checked=True needs concrete statistics; under jit use checked=False")
        if checked or (checked is None and not traced):
            _check_counts(part.counts, f"{name}.counts" if name else "counts")


def _check_counts(counts: Array, name: str) -> None:
    values = to_numpy(counts)
    bad = np.flatnonzero(values.reshape(-1) < 0)
    if bad.size:
        index = np.unravel_index(bad[0], values.shape)
        raise ValueError(
            f"DomainStats {name} has a negative value {values[index]} at domain {index[-1]} "
            f"(index {tuple(int(i) for i in index)}): counts are sample or token numbers, >= 0"
        )


def merge_stats(a: Any, b: Any) -> Any:
    """Sum two partial statistics (micro-batches, ranks): ``DomainStats`` or ``TwinStats``.

    Args:
        a: ``DomainStats`` or ``TwinStats`` with arrays ``(..., M)``.
        b: the same structure.

    Returns:
        The same structure, leaf-wise sums. Associative and commutative.
    """
    if isinstance(a, TwinStats):
        return TwinStats(merge_stats(a.proxy, b.proxy), merge_stats(a.reference, b.reference))
    if _check_pair(a, "merge_stats(a)") != _check_pair(b, "merge_stats(b)"):
        raise ValueError(
            f"merge_stats: a covers {a.sums.shape[-1]} domains, b covers {b.sums.shape[-1]}"
        )
    xp = namespace(a.sums, b.sums)
    invalid = None
    if a.invalid is not None or b.invalid is not None:
        invalid = _invalid(a, xp=xp) + _invalid(b, xp=xp)
    return DomainStats(a.sums + b.sums, a.counts + b.counts, invalid)


def pack_stats(stats: Any) -> Array:
    """Concatenate statistics into ONE vector for a single all-reduce: ``[sums, counts, invalid]``.

    Args:
        stats: ``DomainStats`` (vector ``(2M + 1,)``) or ``TwinStats`` (proxy then reference,
            ``(4M + 2,)``).

    Returns:
        1-D array in the dtype of the sums.
    """
    if isinstance(stats, TwinStats):
        xp = namespace(stats.proxy.sums)
        return xp.concat([pack_stats(stats.proxy), pack_stats(stats.reference)])
    xp = namespace(stats.sums, stats.counts)
    parts = [stats.sums, stats.counts, xp.reshape(_invalid(stats, xp=xp), (1,))]
    return xp.concat([xp.astype(p, stats.sums.dtype) for p in parts])


def unpack_stats(vector: Array, num_domains: int, *, twin: bool = False) -> Any:
    """Inverse of :func:`pack_stats`.

    Args:
        vector: array ``(2M + 1,)`` or, with ``twin``, ``(4M + 2,)``.
        num_domains: ``M``.
        twin: whether the vector holds ``TwinStats``.

    Returns:
        ``DomainStats`` or ``TwinStats``.
    """
    m = num_domains
    size = (2 * m + 1) * (2 if twin else 1)
    if vector.shape != (size,):
        raise ValueError(
            f"packed stats for M={m} (twin={twin}) have shape ({size},), got {vector.shape}"
        )
    if twin:
        half = 2 * m + 1
        return TwinStats(unpack_stats(vector[:half], m), unpack_stats(vector[half:], m))
    return DomainStats(vector[:m], vector[m : 2 * m], vector[2 * m])


def all_reduce_stats(stats: Any, all_reduce_sum: Callable[[Array], Array]) -> Any:
    """Sum statistics over ranks with ONE collective on the packed vector, before any division.

    Args:
        stats: ``DomainStats`` or ``TwinStats`` of one rank, arrays ``(M,)``.
        all_reduce_sum: the backend's collective ``f(vector) -> vector`` (identity on one rank).

    Returns:
        The global statistics, same structure.
    """
    m = (stats.proxy if isinstance(stats, TwinStats) else stats).sums.shape[-1]
    return unpack_stats(all_reduce_sum(pack_stats(stats)), m, twin=isinstance(stats, TwinStats))


def domain_means(stats: DomainStats) -> tuple[Array, Array]:
    """Per-domain means ``sums / counts`` and which domains were seen.

    Args:
        stats: ``DomainStats`` with arrays ``(..., M)``.

    Returns:
        ``(means, present)``: float ``(..., M)`` (0 where missing) and bool ``(..., M)``.
    """
    _check_pair(stats, "DomainStats")
    xp = namespace(stats.sums, stats.counts)
    present = stats.counts > 0
    safe = xp.where(present, stats.counts, xp.ones_like(stats.counts))
    return xp.where(present, stats.sums / safe, xp.zeros_like(stats.sums)), present


def twin_delta(stats: TwinStats) -> tuple[Array, Array]:
    """TANDEM's twin difference ``Delta_m = mean_reference_m - mean_proxy_m``.

    Step 3 of docs/methods.md, "TANDEM: Update".

    Args:
        stats: ``TwinStats`` with arrays ``(..., M)``.

    Returns:
        ``(delta, present)``: float ``(..., M)`` (0 where missing) and bool ``(..., M)``, a domain
        being present when both twins saw it.
    """
    _check_twins(stats)
    mean_w, seen_w = domain_means(stats.reference)
    mean_u, seen_u = domain_means(stats.proxy)
    return mean_w - mean_u, seen_w & seen_u


def fill_missing(
    signal: Array, present: Array, last: Array, seen: Array, policy: str
) -> tuple[Array, Array | None]:
    """Apply the missing-domain policy to a per-domain signal.

    See docs/methods.md, "Twin loss accounting: Missing domains".

    - ``carry``: a missing domain reuses its last seen signal; never seen: the mean of the present
      domains' signals (neutral under the shift-invariant updates).
    - ``zero``: a missing domain's signal is 0.
    - ``skip``: a missing domain's weight is frozen this update (the returned mask tells the step).

    Args:
        signal: float ``(M,)``; ignored where not ``present``.
        present: bool ``(M,)``.
        last: float ``(M,)``, the last signal seen per domain.
        seen: bool ``(M,)``, whether ``last`` holds a real value.
        policy: one of ``MISSING_POLICIES``.

    Returns:
        ``(filled, mask)``: the signal to step with ``(M,)`` and, for ``skip``, the bool mask of
        domains allowed to move (``None`` otherwise).
    """
    xp = namespace(signal, present, last)
    zero = xp.zeros_like(signal)
    if policy == "zero":
        return xp.where(present, signal, zero), None
    if policy == "skip":
        return xp.where(present, signal, zero), present
    if policy != "carry":
        raise ValueError(
            f"unknown missing-domain policy {policy!r}; choose one of {MISSING_POLICIES}"
        )
    n = xp.sum(xp.astype(present, signal.dtype))
    neutral = xp.sum(xp.where(present, signal, zero)) / xp.where(n > 0, n, xp.ones_like(n))
    return xp.where(present, signal, xp.where(seen, last, neutral)), None


def weighted_objective(sums: Array, counts: Array, alpha: Array | None = None) -> Array:
    """The mixture objective ``sum_m alpha_m sums_m / counts_m`` (alpha ``None``: plain mean).

    With ``counts`` of the WHOLE batch (all ranks, all micro-batches) and ``sums`` of a part of
    it, the parts' objectives add up to the whole batch's, so their gradients sum exactly: the
    rule that makes data parallelism and gradient accumulation equal to one big batch.

    Args:
        sums: float ``(M,)`` per-domain loss sums of this part (differentiable).
        counts: float ``(M,)`` per-domain sample counts of the whole batch.
        alpha: ``(M,)`` mixture, or ``None`` when the batch was sampled in proportion to it.

    Returns:
        A scalar (domains with no sample contribute 0).
    """
    xp = namespace(sums, counts)
    counts = xp.astype(counts, sums.dtype)
    if alpha is None:
        return xp.sum(sums) / xp.maximum(xp.sum(counts), xp.ones((), dtype=sums.dtype))
    safe = xp.where(counts > 0, counts, xp.ones_like(counts))
    return xp.sum(
        xp.astype(alpha, sums.dtype) * xp.where(counts > 0, sums / safe, xp.zeros_like(sums))
    )


def stats_to_numpy(stats: Any) -> Any:
    """Host copy of statistics (for logging steps only: it is a device-to-host transfer)."""
    return tree_map(to_numpy, stats)
