"""The mixture transform: one ``init``/``update`` pair shared by every method."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from ._utils import (
    Array,
    array_device,
    as_namespace,
    is_numpy,
    is_torch,
    namespace,
    safe_increment,
    to_numpy,
    tree_leaves,
    tree_where,
)
from .accounting import MISSING_POLICIES, check_stats, fill_missing
from .simplex import time_average
from .stages import Stage

__all__ = [
    "MixtureState",
    "MixtureSummary",
    "MixtureTransform",
    "mixture_summary",
    "mixture_transform",
]

SignalFn = Callable[
    ..., tuple[Array, Array]
]  # (stats, *, xp, like) -> (grad (M,), present (M,) bool)
InitialFn = Callable[..., Array]  # (num_domains, *, xp, dtype, device) -> alpha (M,)


class MixtureState(NamedTuple):
    """State of every mixture transform: arrays only (a pytree in JAX, tensors in torch)."""

    alpha: Array  # (M,) float: the current mixture, on the simplex
    alpha_sum: Array  # (M,) float: sum of alpha after the averaged updates (average numerator)
    count: Array  # () int32: applied updates (saturating)
    averaged: Array  # () int32: updates summed in alpha_sum (those from `average_from` on)
    last_signal: Array  # (M,) float: last gradient seen per domain (missing policy "carry")
    seen: Array  # (M,) bool: whether last_signal holds a real value
    missing: Array  # (M,) int32: updates at which each domain was missing from the statistics
    skipped: Array  # () int32: updates skipped: signal or result not finite, or off the simplex
    history: Array  # (H, M) float: ring buffer of the last H mixtures (H = 0 keeps none)
    inner: Any  # the stage chain's state: tuple of NamedTuples of arrays


class MixtureTransform(NamedTuple):
    """A mixture algorithm as a pair of pure functions (optax ``GradientTransformation`` style).

    ``init(num_domains, *, xp=None, dtype=None, device=None) -> MixtureState`` and
    ``update(state, stats, *, checked=None, **extra) -> MixtureState``.
    """

    init: Callable[..., MixtureState]
    update: Callable[..., MixtureState]


class MixtureSummary(NamedTuple):
    """A run's output: the time-averaged mixture (default), the last one, the trajectory."""

    average: Array  # (M,) float: mean of the mixtures after the averaged updates
    last: Array  # (M,) float
    trajectory: Array  # (T, M) float: the last T <= H mixtures, oldest first ((0, M) when H = 0)


def uniform_initial(num_domains: int, *, xp: Any, dtype: Any, device: Any) -> Array:
    """The uniform mixture ``(M,)``."""
    return xp.full((num_domains,), 1.0 / num_domains, dtype=dtype, device=device)


def mixture_transform(
    signal: SignalFn,
    stage: Stage,
    *,
    missing: str = "carry",
    history: int = 0,
    initial: InitialFn = uniform_initial,
    floor: float = 0.0,
    average_from: int = 0,
) -> MixtureTransform:
    """Build a ``MixtureTransform`` from a signal function and a stage chain.

    ``update`` reads the per-domain gradient from the statistics, fills missing domains by the
    policy, runs the stages, and keeps the state unchanged (counting it in ``skipped``) unless the
    gradient, the new mixture and the stages' new state are finite and the new mixture is on the
    simplex (``alpha >= floor - tol``, ``|sum(alpha) - 1| <= tol``, ``tol = (2 M + 8) eps`` of
    the dtype), so a wrong mixture is never reported. No Python branch depends on array values:
    the update runs under ``jax.jit`` and ``torch.compile``.

    ``update(state, stats, *, checked=None, **extra)`` checks the statistics' shapes always
    (``check_stats``: a ``TwinStats``' twins must cover the same ``M`` domains as the mixture)
    and, with ``checked``, their counts' values (a negative count raises). ``checked=None``
    checks the values when the statistics are numpy arrays (host memory: free); device arrays
    (torch, JAX) are read only with ``checked=True``, eagerly, since that is a device sync.

    Args:
        signal: ``f(stats, *, xp, like) -> (grad (M,), present (M,) bool)``, descent convention.
        stage: the ``Stage`` that steps the mixture (usually a ``chain``).
        missing: missing-domain policy, one of ``carry | zero | skip``.
        history: number of past mixtures kept on device in ``state.history`` (0: none).
        initial: ``f(M, *, xp, dtype, device) -> alpha (M,)``; uniform by default.
        floor: the minimum weight per domain the stages guarantee (the guard's lower bound).
        average_from: the first applied update (0-based) whose mixture enters the time average
            (``mixture_summary(...).average``): 0 averages every update; ``T // 2`` of a run of T
            updates drops the first half, the burn-in from the uniform start ("tail averaging").

    Returns:
        A ``MixtureTransform``.

    Raises:
        ValueError: an unknown policy, a negative or non-integer ``history`` or
            ``average_from``, a floor outside ``[0, 1)``; ``init`` raises on a non-integer or
            non-positive ``num_domains`` or a non-floating dtype.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(
            f"unknown missing-domain policy {missing!r}; choose one of {MISSING_POLICIES}"
        )
    history = _integer("history", history, low=0)
    average_from = _integer("average_from", average_from, low=0)
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")

    def init(
        num_domains: int, *, xp: Any = None, dtype: Any = None, device: Any = None
    ) -> MixtureState:
        num_domains = _integer("num_domains", num_domains, low=1)
        xp = as_namespace(xp)
        dtype = xp.asarray(0.0).dtype if dtype is None else dtype
        if not xp.isdtype(dtype, "real floating"):
            raise ValueError(f"dtype must be a real floating dtype for alpha, got {dtype}")
        alpha = initial(num_domains, xp=xp, dtype=dtype, device=device)
        zeros = xp.zeros_like(alpha)
        dev = array_device(alpha)
        int_zero = xp.zeros((), dtype=xp.int32, device=dev)
        return MixtureState(
            alpha=alpha,
            alpha_sum=zeros,
            count=int_zero,
            averaged=int_zero,
            last_signal=zeros,
            seen=xp.zeros(alpha.shape, dtype=xp.bool, device=dev),
            missing=xp.zeros(alpha.shape, dtype=xp.int32, device=dev),
            skipped=int_zero,
            history=xp.zeros((history, alpha.shape[0]), dtype=dtype, device=dev),
            inner=stage.init(alpha),
        )

    def update(
        state: MixtureState, stats: Any, *, checked: bool | None = None, **extra: Any
    ) -> MixtureState:
        xp = namespace(state.alpha)
        leaves = tree_leaves(stats)
        _check_namespace(state.alpha, leaves)
        on_host = checked is None and all(is_numpy(x) for x in leaves)
        check_stats(stats, state.alpha.shape[-1], checked=checked or on_host)
        grad, present = signal(stats, xp=xp, like=state.alpha)
        if grad.shape != state.alpha.shape:
            raise ValueError(
                f"statistics cover {grad.shape[-1] if grad.ndim else 0} domains, the mixture has "
                f"{state.alpha.shape[0]}: check num_domains against the data"
            )
        grad = xp.astype(grad, state.alpha.dtype)
        filled, mask = fill_missing(grad, present, state.last_signal, state.seen, missing)
        alpha, _, inner = stage.update(state.alpha, filled, state.inner, mask=mask, **extra)
        ok = _finite(filled, alpha, inner, xp=xp) & _on_simplex(alpha, floor, xp=xp)
        tail = state.count >= average_from  # this update's index, before counting it
        candidate = MixtureState(
            alpha=alpha,
            alpha_sum=state.alpha_sum + xp.where(tail, alpha, xp.zeros_like(alpha)),
            count=safe_increment(state.count, xp=xp),
            averaged=safe_increment(state.averaged, xp=xp, by=xp.astype(tail, xp.int32)),
            last_signal=xp.where(present, grad, state.last_signal),
            seen=state.seen | present,
            missing=state.missing + xp.astype(~present, xp.int32),
            skipped=state.skipped,
            history=_record(state.history, state.count, alpha, xp=xp),
            inner=inner,
        )
        new = tree_where(ok, candidate, state, xp=xp)
        return new._replace(
            skipped=safe_increment(state.skipped, xp=xp, by=xp.astype(~ok, xp.int32))
        )

    return MixtureTransform(init, update)


def _integer(name: str, value: Any, *, low: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
    if number < low:
        raise ValueError(f"{name} must be >= {low}, got {number}")
    return number


def _check_namespace(alpha: Array, leaves: list) -> None:
    """Statistics from another array library than the state's cannot be mixed into it."""
    numpy_state, torch_state = is_numpy(alpha), is_torch(alpha)
    for leaf in leaves:
        if isinstance(leaf, (int, float)):
            continue
        if (numpy_state and not is_numpy(leaf)) or torch_state != is_torch(leaf):
            raise TypeError(
                f"the statistics are {type(leaf).__module__}.{type(leaf).__name__} arrays but "
                f"the mixture state holds {type(alpha).__module__}.{type(alpha).__name__}: "
                "create the state in the statistics' library, e.g. transform.init(M, "
                "xp=torch, device=losses.device) (or a backend's twins.init_mixture(transform))"
            )


def _finite(*trees: Any, xp: Any) -> Array:
    """One bool: every floating leaf of ``trees`` is finite (integer leaves always are)."""
    leaves = [x for x in tree_leaves(trees) if xp.isdtype(x.dtype, "real floating")]
    ok = xp.all(xp.isfinite(leaves[0]))
    for leaf in leaves[1:]:
        ok = ok & xp.all(xp.isfinite(leaf))
    return ok


def _on_simplex(alpha: Array, floor: float, *, xp: Any) -> Array:
    """One bool: ``alpha >= floor`` and ``sum(alpha) == 1`` up to a few roundings per domain."""
    tol = (2 * alpha.shape[-1] + 8) * float(xp.finfo(alpha.dtype).eps)
    total = xp.sum(alpha, axis=-1)
    return xp.all(alpha >= floor - tol) & xp.all(xp.abs(total - 1.0) <= tol)


def _record(history: Array, count: Array, alpha: Array, *, xp: Any) -> Array:
    size = history.shape[0]
    if size == 0:
        return history
    rows = xp.arange(size, dtype=count.dtype)[:, None] == (count % size)
    return xp.where(rows, alpha[None, :], history)


def mixture_summary(state: MixtureState) -> MixtureSummary:
    """Average (default output), last mixture and the kept trajectory of a run.

    The average is over the updates from the transform's ``average_from`` on (every update by
    default); before the first of them it is the current mixture.

    Reads ``state.count`` on the host: call it at the end or on logging steps, not per step.

    Args:
        state: a ``MixtureState``.

    Returns:
        ``MixtureSummary(average (M,), last (M,), trajectory (T, M))`` in the state's namespace.
    """
    xp = namespace(state.alpha)
    average = time_average(state.alpha_sum, state.averaged, state.alpha)
    size = state.history.shape[0]
    kept = min(int(to_numpy(state.count)), size)
    start = int(to_numpy(state.count)) % size if size else 0
    order = [(start - kept + i) % size for i in range(kept)] if size else []
    index = xp.asarray(order, dtype=xp.int32, device=array_device(state.history))
    trajectory = xp.take(state.history, index, axis=0) if size else state.history
    return MixtureSummary(average=average, last=state.alpha, trajectory=trajectory)


def check_mixture(state: MixtureState, *, floor: float = 0.0, atol: float = 1e-5) -> None:
    """Assert the mixture invariants on the host: finite, ``>= floor``, summing to 1.

    A debugging aid (it reads alpha: a device sync); the trainers call it after every update
    when ``debug`` is set.

    Raises:
        FloatingPointError: a non-finite, negative (below ``floor``) or unnormalised alpha.
    """
    alpha = to_numpy(state.alpha).astype("float64")
    problems = []
    if not (alpha == alpha).all() or abs(alpha).max() == float("inf"):
        problems.append("non-finite values")
    if alpha.min() < floor - atol:
        problems.append(f"min {alpha.min():.3g} < floor {floor}")
    if abs(alpha.sum() - 1.0) > atol * max(1, alpha.size):
        problems.append(f"sum {alpha.sum():.9g} != 1")
    if problems:
        raise FloatingPointError(f"mixture invariant broken ({'; '.join(problems)}): alpha={alpha}")
