"""The mixture transform: one ``init``/``update`` pair shared by every method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ._utils import (
    Array,
    array_device,
    as_namespace,
    namespace,
    safe_increment,
    to_numpy,
    tree_where,
)
from .accounting import MISSING_POLICIES, fill_missing
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
    alpha_sum: Array  # (M,) float: sum of alpha after each applied update (time average numerator)
    count: Array  # () int32: applied updates (saturating)
    last_signal: Array  # (M,) float: last gradient seen per domain (missing policy "carry")
    seen: Array  # (M,) bool: whether last_signal holds a real value
    missing: Array  # (M,) int32: updates at which each domain was missing from the statistics
    skipped: Array  # () int32: updates skipped because the signal or the result was not finite
    history: Array  # (H, M) float: ring buffer of the last H mixtures (H = 0 keeps none)
    inner: Any  # the stage chain's state: tuple of NamedTuples of arrays


class MixtureTransform(NamedTuple):
    """A mixture algorithm as a pair of pure functions (optax ``GradientTransformation`` style).

    ``init(num_domains, *, xp=None, dtype=None, device=None) -> MixtureState`` and
    ``update(state, stats, **extra) -> MixtureState``.
    """

    init: Callable[..., MixtureState]
    update: Callable[..., MixtureState]


class MixtureSummary(NamedTuple):
    """A run's output: the time-averaged mixture (default), the last one, the trajectory."""

    average: Array  # (M,) float
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
) -> MixtureTransform:
    """Build a ``MixtureTransform`` from a signal function and a stage chain.

    ``update`` reads the per-domain gradient from the statistics, fills missing domains by the
    policy, runs the stages, and keeps the state unchanged (counting it in ``skipped``) when the
    gradient or the new mixture is not finite, so alpha is never NaN. No Python branch depends on
    array values: the update runs under ``jax.jit`` and ``torch.compile``.

    Args:
        signal: ``f(stats, *, xp, like) -> (grad (M,), present (M,) bool)``, descent convention.
        stage: the ``Stage`` that steps the mixture (usually a ``chain``).
        missing: missing-domain policy, one of ``carry | zero | skip``.
        history: number of past mixtures kept on device in ``state.history`` (0: none).
        initial: ``f(M, *, xp, dtype, device) -> alpha (M,)``; uniform by default.

    Returns:
        A ``MixtureTransform``.
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(
            f"unknown missing-domain policy {missing!r}; choose one of {MISSING_POLICIES}"
        )
    if history < 0:
        raise ValueError(f"history must be >= 0, got {history}")

    def init(
        num_domains: int, *, xp: Any = None, dtype: Any = None, device: Any = None
    ) -> MixtureState:
        if int(num_domains) < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        xp = as_namespace(xp)
        dtype = xp.asarray(0.0).dtype if dtype is None else dtype
        alpha = initial(int(num_domains), xp=xp, dtype=dtype, device=device)
        zeros = xp.zeros_like(alpha)
        dev = array_device(alpha)
        int_zero = xp.zeros((), dtype=xp.int32, device=dev)
        return MixtureState(
            alpha=alpha,
            alpha_sum=zeros,
            count=int_zero,
            last_signal=zeros,
            seen=xp.zeros(alpha.shape, dtype=xp.bool, device=dev),
            missing=xp.zeros(alpha.shape, dtype=xp.int32, device=dev),
            skipped=int_zero,
            history=xp.zeros((history, alpha.shape[0]), dtype=dtype, device=dev),
            inner=stage.init(alpha),
        )

    def update(state: MixtureState, stats: Any, **extra: Any) -> MixtureState:
        xp = namespace(state.alpha)
        grad, present = signal(stats, xp=xp, like=state.alpha)
        if grad.shape != state.alpha.shape:
            raise ValueError(
                f"statistics cover {grad.shape[-1] if grad.ndim else 0} domains, the mixture has "
                f"{state.alpha.shape[0]}: check num_domains against the data"
            )
        grad = xp.astype(grad, state.alpha.dtype)
        filled, mask = fill_missing(grad, present, state.last_signal, state.seen, missing)
        alpha, _, inner = stage.update(state.alpha, filled, state.inner, mask=mask, **extra)
        ok = xp.all(xp.isfinite(filled)) & xp.all(xp.isfinite(alpha))
        candidate = MixtureState(
            alpha=alpha,
            alpha_sum=state.alpha_sum + alpha,
            count=safe_increment(state.count, xp=xp),
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


def _record(history: Array, count: Array, alpha: Array, *, xp: Any) -> Array:
    size = history.shape[0]
    if size == 0:
        return history
    rows = xp.arange(size, dtype=count.dtype)[:, None] == (count % size)
    return xp.where(rows, alpha[None, :], history)


def mixture_summary(state: MixtureState) -> MixtureSummary:
    """Average (default output), last mixture and the kept trajectory of a run.

    Reads ``state.count`` on the host: call it at the end or on logging steps, not per step.

    Args:
        state: a ``MixtureState``.

    Returns:
        ``MixtureSummary(average (M,), last (M,), trajectory (T, M))`` in the state's namespace.
    """
    xp = namespace(state.alpha)
    average = time_average(state.alpha_sum, state.count, state.alpha)
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
