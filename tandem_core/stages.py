"""Composable mixture stages (the optax recipe): pairs of pure functions over a NamedTuple state.

A stage's ``update(alpha, grad, state, *, mask=None, **extra) -> (alpha, grad, state)`` may rescale
the per-domain gradient (``scale_by_rms``), step the mixture (``gradient_descent``,
``exponentiated_gradient``) or post-process it (``simplex_projection``, ``smoothing``). ``chain``
threads both through a sequence. Gradients follow the descent convention: lower is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from ._utils import Array, array_device, namespace, safe_increment
from .simplex import eg_step, project_simplex, smooth

__all__ = [
    "EmptyState",
    "RmsState",
    "Stage",
    "chain",
    "exponentiated_gradient",
    "gradient_descent",
    "identity",
    "scale_by_rms",
    "simplex_projection",
    "smoothing",
]


class Stage(NamedTuple):
    """A pair of pure functions: ``init(alpha) -> state`` and ``update(alpha, grad, state, **kw)``.

    ``update`` returns ``(alpha, grad, state)``: new arrays and a new state, never mutating inputs.
    """

    init: Callable[[Array], Any]
    update: Callable[..., tuple[Array, Array, Any]]


class EmptyState(NamedTuple):
    """State of a stateless stage."""


def _positive(name: str, value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 and finite, got {value}")


def identity() -> Stage:
    """A stage that changes nothing (static mixtures)."""
    return Stage(
        lambda alpha: EmptyState(), lambda alpha, grad, state, **extra: (alpha, grad, state)
    )


class RmsState(NamedTuple):
    """State of ``scale_by_rms``."""

    nu: Array  # (), float: EMA of the mean squared centred gradient
    count: Array  # (), int32: updates seen (bias correction)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-12) -> Stage:
    """Centre the gradient over domains and divide it by the running RMS of its size.

    The twin difference is tiny and its scale drifts with the loss, so a fixed ``eta_alpha``
    either barely moves alpha or overshoots (docs/methods.md, "TANDEM: Defaults"). Centring does
    not change the direction of either step (both are invariant to adding a constant to every
    coordinate); the bias-corrected EMA makes a typical step move ``log alpha`` (EG) or ``alpha``
    (PGD) by about the learning rate.

    Args:
        decay: EMA decay in ``[0, 1)``.
        eps: added to the RMS, so an all-equal gradient stays 0.

    Returns:
        A ``Stage`` with ``RmsState``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"eps must be >= 0 and finite, got {eps}")

    def init(alpha: Array) -> RmsState:
        xp = namespace(alpha)
        dev = array_device(alpha)
        return RmsState(
            xp.zeros((), dtype=alpha.dtype, device=dev), xp.zeros((), dtype=xp.int32, device=dev)
        )

    def update(alpha, grad, state, *, mask=None, **extra):
        xp = namespace(alpha, grad)
        weight = xp.ones_like(grad) if mask is None else xp.astype(mask, grad.dtype)
        n = xp.maximum(xp.sum(weight), xp.ones((), dtype=grad.dtype))
        centred = (grad - xp.sum(weight * grad) / n) * weight
        nu = decay * state.nu + (1.0 - decay) * xp.sum(centred * centred) / n
        count = safe_increment(state.count, xp=xp)
        nu_hat = nu / (1.0 - decay ** xp.astype(count, grad.dtype))
        return alpha, centred / (xp.sqrt(nu_hat) + eps), RmsState(nu, count)

    return Stage(init, update)


def gradient_descent(lr: float) -> Stage:
    """``alpha - lr * grad`` (leaves the simplex: follow it with ``simplex_projection``).

    Args:
        lr: step size > 0.

    Returns:
        A stateless ``Stage``; with a ``mask`` only ``True`` domains move.
    """
    _positive("lr", lr)

    def update(alpha, grad, state, *, mask=None, **extra):
        xp = namespace(alpha, grad)
        stepped = alpha - lr * grad
        return (stepped if mask is None else xp.where(mask, stepped, alpha)), grad, state

    return Stage(lambda alpha: EmptyState(), update)


def simplex_projection(floor: float = 0.0) -> Stage:
    """Euclidean projection onto the simplex with a floor (``project_simplex``).

    With a ``mask`` (the ``skip`` policy) the moving domains are projected onto the mass they held
    before the step, so frozen domains keep their weight exactly.

    Args:
        floor: minimum weight per domain, ``M * floor < 1``.

    Returns:
        A stateless ``Stage``.
    """
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")

    def init(alpha: Array) -> EmptyState:
        project_simplex(alpha, floor)  # raises early if M * floor >= 1
        return EmptyState()

    def update(alpha, grad, state, *, mask=None, **extra):
        if mask is None:
            return project_simplex(alpha, floor), grad, state
        xp = namespace(alpha, mask)
        frozen = xp.sum(xp.where(mask, xp.zeros_like(alpha), alpha))
        return project_simplex(alpha, floor, total=1.0 - frozen, mask=mask), grad, state

    return Stage(init, update)


def exponentiated_gradient(lr: float) -> Stage:
    """Mirror-descent step ``alpha * exp(-lr * grad)`` renormalised (``eg_step``; DoReMi/DoGE form).

    Args:
        lr: step size > 0.

    Returns:
        A stateless ``Stage``; with a ``mask`` only ``True`` domains move, keeping their total mass.
    """
    _positive("lr", lr)

    def update(alpha, grad, state, *, mask=None, **extra):
        # values unchecked (no sync, jit-safe): a non-finite step is the transform guard's
        return eg_step(alpha, grad, lr, mask=mask, checked=False), grad, state

    return Stage(lambda alpha: EmptyState(), update)


def smoothing(c: float) -> Stage:
    """Mix toward uniform, ``(1 - c) * alpha + c / M`` (``smooth``).

    Args:
        c: smoothing in ``[0, 1]``.

    Returns:
        A stateless ``Stage``.
    """
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {c}")
    return Stage(
        lambda alpha: EmptyState(),
        lambda alpha, grad, state, **extra: (smooth(alpha, c), grad, state),
    )


def chain(*stages: Stage) -> Stage:
    """Compose stages left to right; the state is the tuple of the stages' states.

    Args:
        *stages: ``Stage`` objects.

    Returns:
        A ``Stage`` whose state is ``tuple(stage.init(alpha) for stage in stages)``.

    Examples:
        >>> import numpy as np
        >>> step = chain(gradient_descent(0.5), simplex_projection())
        >>> alpha = np.full(3, 1 / 3)
        >>> new, _, _ = step.update(alpha, np.array([1.0, 0.0, 0.0]), step.init(alpha))
        >>> new.round(4).tolist()
        [0.0, 0.5, 0.5]
    """

    def init(alpha: Array) -> tuple:
        return tuple(stage.init(alpha) for stage in stages)

    def update(alpha, grad, state, **extra):
        if len(state) != len(stages):
            raise ValueError(
                f"chain has {len(stages)} stages but the state has {len(state)} entries: "
                "make sure you called init of this same chain first"
            )
        new_states = []
        for stage, sub in zip(stages, state):
            alpha, grad, sub = stage.update(alpha, grad, sub, **extra)
            new_states.append(sub)
        return alpha, grad, tuple(new_states)

    return Stage(init, update)
