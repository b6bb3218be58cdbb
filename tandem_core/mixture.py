"""Mixture algorithms as ``MixtureTransform``s: TANDEM and the baselines.

Uniform, natural, temperature, DoReMi and DoGE share TANDEM's interface. Each factory closes over
its hyper-parameters; the state is a ``MixtureState``.

Gradient convention: every method descends a per-domain gradient ``g`` (lower ``g`` gains weight).
TANDEM: ``g = gamma * Delta`` (its paper's Eq. 5); DoReMi: ``g = -excess``; DoGE: ``g = -W``
(docs/methods.md, "Conventions", and each method's "Update").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._transform import (
    MixtureState,
    MixtureSummary,
    MixtureTransform,
    check_mixture,
    mixture_summary,
    mixture_transform,
)
from ._utils import Array, array_device
from .accounting import DomainStats, TwinStats, domain_means, twin_delta
from .stages import (
    chain,
    exponentiated_gradient,
    gradient_descent,
    identity,
    scale_by_rms,
    simplex_projection,
)
from .stages import smoothing as smoothing_stage

__all__ = [
    "AlignmentStats",
    "MixtureState",
    "check_mixture",
    "MixtureSummary",
    "MixtureTransform",
    "doge",
    "doremi",
    "fixed",
    "mixture_summary",
    "mixture_transform",
    "natural",
    "tandem",
    "temperature",
    "uniform",
]

STEPS = ("pgd", "eg")
NORMALIZE = ("none", "rms")
DOGE_NORMALIZE = ("reference", "none")
CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s and DoGE's ``+ 1e-6`` in the norms


class AlignmentStats(NamedTuple):
    """What the alignment signal delivers (docs/architecture.md, the table of signals).

    The backends measure it on the proxy u at one step's batches; ``doge`` reads it.
    """

    scores: Array  # (M,) float: <g_m, g_val>, g_m = grad L^m_train(u), g_val = grad L_val(u)
    norms: Array  # (M,) float: ||g_m|| over all parameters
    val_norm: Array  # () float: ||g_val|| over all parameters


def _array_signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
    grad = xp.asarray(stats, device=array_device(like))
    return grad, xp.ones(grad.shape, dtype=xp.bool, device=array_device(like))


def _twin_signal(gamma: float):
    def signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
        if isinstance(stats, TwinStats):
            delta, present = twin_delta(stats)
        elif isinstance(stats, DomainStats):
            raise TypeError(
                "tandem needs TwinStats(proxy=..., reference=...) or a Delta array (M,)"
            )
        else:
            delta, present = _array_signal(stats, xp=xp, like=like)
        return gamma * delta, present

    return signal


def _mean_signal(sign: float, name: str):
    def signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
        if isinstance(stats, DomainStats):
            means, present = domain_means(stats)
        elif isinstance(stats, TwinStats):
            raise TypeError(
                f"{name} needs DomainStats or a per-domain score array (M,), not TwinStats"
            )
        else:
            means, present = _array_signal(stats, xp=xp, like=like)
        return sign * means, present

    return signal


def _no_signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
    del stats
    return xp.zeros_like(like), xp.ones(like.shape, dtype=xp.bool, device=array_device(like))


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {tuple(allowed)}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not 0 < value < math.inf:
            raise ValueError(f"{name} must be > 0 and finite, got {value}")


def tandem(
    eta_alpha: float = 1.0,
    gamma: float = 1.0,
    step: str = "pgd",
    floor: float = 0.0,
    smoothing: float = 0.0,
    missing: str = "carry",
    *,
    normalize: str = "none",
    rms_decay: float = 0.9,
    history: int = 0,
    average_from: int = 0,
) -> MixtureTransform:
    """TANDEM's penalised mixture update (Eq. 5 of the paper).

    Step 4 of docs/methods.md, "TANDEM: Update": ``alpha <- Proj_A(alpha - eta_alpha * gamma *
    Delta)`` with ``Delta_m = L^m_train(w_K) - L^m_train(u_K)`` (``step="pgd"``, the paper's
    form), or ``alpha * exp(-eta_alpha * gamma * Delta)`` renormalised (``step="eg"``, the
    DoReMi/DoGE convention; our choice, not the paper's).

    Args:
        eta_alpha: mixture step size > 0.
        gamma: penalty coefficient > 0 (1 in the paper).
        step: ``"pgd"`` or ``"eg"``.
        floor: minimum weight per domain (``M * floor < 1``).
        smoothing: mix toward uniform after each step, ``c`` in ``[0, 1)``.
        missing: policy for domains absent from the statistics: ``carry | zero | skip``.
        normalize: ``"rms"`` divides the centred Delta by its running RMS (our option; see
            docs/methods.md, "TANDEM: Defaults"): ``eta_alpha`` then sets the step in units of a
            typical Delta. ``"none"``: the paper.
        rms_decay: EMA decay of the RMS normaliser.
        history: mixtures kept on device in ``state.history``.
        average_from: the first update whose mixture the output average includes (0: all;
            the ``tandem`` method's default drops the first half of the run's updates).

    Returns:
        A ``MixtureTransform``; ``update(state, stats)`` takes ``TwinStats`` or Delta ``(M,)``.

    Examples:
        >>> import numpy as np
        >>> t = tandem(eta_alpha=1.0)
        >>> state = t.update(t.init(2), np.array([0.1, -0.1]))
        >>> state.alpha.round(4).tolist()
        [0.4, 0.6]
    """
    _check_positive(eta_alpha=eta_alpha, gamma=gamma)
    _check_choice("step", step, STEPS)
    _check_choice("normalize", normalize, NORMALIZE)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    # the signal is the hyper-gradient dH/dalpha = gamma * Delta; "rms" cancels gamma (as Adam)
    stages = [scale_by_rms(rms_decay)] if normalize == "rms" else []
    if step == "pgd":
        stages += [gradient_descent(eta_alpha), simplex_projection(floor)]
    else:
        stages += [exponentiated_gradient(eta_alpha)]
    if smoothing > 0:
        stages.append(smoothing_stage(smoothing))
    if step == "eg" and floor > 0:
        stages.append(simplex_projection(floor))
    signal = _twin_signal(gamma)
    return mixture_transform(
        signal,
        chain(*stages),
        missing=missing,
        history=history,
        floor=floor,
        average_from=average_from,
    )


def doremi(
    eta: float = 1.0, smoothing: float = 1e-3, missing: str = "carry", *, history: int = 0
) -> MixtureTransform:
    """DoReMi (Xie et al. 2023, Alg. 1 l. 7-8): ``log a' = log a + eta s``, ``a = (1-c) a' + c/M``.

    ``s_m`` is the mean over domain-m tokens of the clipped excess loss ``max(l_proxy - l_ref, 0)``
    (see ``excess_loss_stats``). A domain absent from the batch keeps its last score (``carry``).
    The output is the time average of the mixtures (``mixture_summary``).

    Args:
        eta: step size > 0 (1 in DoReMi).
        smoothing: ``c`` in ``[0, 1)`` (1e-3 in DoReMi).
        missing: ``carry | zero | skip``.
        history: mixtures kept on device.

    Returns:
        A ``MixtureTransform``; ``update(state, stats)`` takes ``DomainStats`` or scores ``(M,)``.
    """
    _check_positive(eta=eta)
    stages = chain(exponentiated_gradient(eta), smoothing_stage(smoothing))
    return mixture_transform(_mean_signal(-1.0, "doremi"), stages, missing=missing, history=history)


def doge(
    eta: float = 1.0,
    smoothing: float = 1e-3,
    missing: str = "carry",
    *,
    normalize: str = "reference",
    score_clip: float = 5.0,
    domain_clip: float | None = 5.0,
    history: int = 0,
) -> MixtureTransform:
    """DoGE (Fan et al. 2024): ``a <- a * exp(eta * W)`` renormalised, then smoothed toward uniform.

    docs/methods.md, "DoGE: Update". ``normalize="reference"`` (the reference code's scores,
    Olivia-fsm/DoGE ``src/trainer.py``): each gradient's norm is clipped to ``domain_clip``
    (``f = min(1, domain_clip / (||g|| + 1e-6))``), and with the clipped gradients

        W_m = clip(<g_m, g_val> / (mean_i ||g_i|| + 1e-6), 0, score_clip)

    This ``W`` is the reference's score divided by its learning rate ``lr_t``; it steps
    ``log a += lr_t * W / mu``, so ``eta = lr / mu`` gives its step (the ``doge`` method passes
    that). ``normalize="none"``: ``W_m = <g_m, g_val>`` as measured (its scale grows like
    ``||g||^2``).

    Args:
        eta: step size > 0.
        smoothing: ``c`` in ``[0, 1)`` (the reference code: 0).
        missing: ``carry | zero | skip``.
        normalize: ``"reference"`` or ``"none"``.
        score_clip: (reference) the upper clip of ``W`` (the reference's ``dw_max`` = 5).
        domain_clip: (reference) the norm each per-domain and the validation gradient is
            clipped to inside the scores (the reference's ``max_grad_norm`` = 5); ``None``: none.
        history: mixtures kept on device.

    Returns:
        A ``MixtureTransform``; ``update(state, stats)`` takes ``AlignmentStats`` (both forms),
        or with ``normalize="none"`` also alignment scores ``(M,)`` or ``DomainStats`` of them.

    Examples:
        >>> import numpy as np
        >>> t = doge(eta=1.0, smoothing=0.0)
        >>> stats = AlignmentStats(np.array([2.0, -1.0]), np.array([1.0, 3.0]), np.array(1.0))
        >>> t.update(t.init(2), stats).alpha.round(4).tolist()  # W = [1, 0]: 2 / mean(1, 3)
        [0.7311, 0.2689]
    """
    _check_positive(eta=eta, score_clip=score_clip)
    if domain_clip is not None:
        _check_positive(domain_clip=domain_clip)
    _check_choice("normalize", normalize, DOGE_NORMALIZE)
    if normalize == "reference":
        signal = _doge_reference_signal(score_clip, domain_clip)
    else:
        signal = _doge_plain_signal
    stages = chain(exponentiated_gradient(eta), smoothing_stage(smoothing))  # c = 0: exact
    return mixture_transform(signal, stages, missing=missing, history=history)


def _doge_plain_signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
    if isinstance(stats, AlignmentStats):
        stats = stats.scores
    return _mean_signal(-1.0, "doge")(stats, xp=xp, like=like)


def _doge_reference_signal(score_clip: float, domain_clip: float | None):
    """``-W`` of the reference code's normalised scores (docs/methods.md, "DoGE: Update")."""

    def signal(stats: Any, *, xp: Any, like: Array) -> tuple[Array, Array]:
        if not isinstance(stats, AlignmentStats):
            raise TypeError(
                "doge(normalize='reference') reads AlignmentStats(scores, norms, val_norm), "
                f"not {type(stats).__name__}: the gradient norms normalise the scores "
                "(normalize='none' reads plain scores)"
            )
        dev = array_device(like)
        scores, norms, val_norm = (xp.asarray(x, device=dev) for x in stats)
        domain = _clip_factor(norms, domain_clip, xp=xp)
        val = _clip_factor(val_norm, domain_clip, xp=xp)
        mean_norm = xp.mean(norms * domain)
        w = scores * domain * val / (mean_norm + CLIP_EPS)
        w = xp.maximum(w, xp.zeros_like(w))
        w = xp.minimum(w, xp.full(w.shape, score_clip, dtype=w.dtype, device=dev))
        return -w, xp.ones(w.shape, dtype=xp.bool, device=dev)

    return signal


def _clip_factor(norm: Array, limit: float | None, *, xp: Any) -> Array:
    """``min(1, limit / (norm + 1e-6))``: the scale ``clip_grad_norm_`` applies to a gradient."""
    one = xp.ones_like(norm)
    if limit is None:
        return one
    return xp.minimum(one, limit / (norm + CLIP_EPS))


def fixed(weights: Sequence[float], *, history: int = 0) -> MixtureTransform:
    """A static mixture ``alpha_m ∝ weights_m`` (zeros allowed; ``update`` only counts).

    The mixture a reference model trains on (docs/methods.md, "DoReMi: Update").

    Args:
        weights: ``M`` finite weights ``>= 0`` with a positive sum.
        history: mixtures kept on device.

    Returns:
        A ``MixtureTransform`` whose ``init`` must be called with ``num_domains == len(weights)``.
    """
    weights = [float(w) for w in weights]
    if not weights or any(not 0 <= w < math.inf for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights}")
    total = sum(weights)
    weights = [w / total for w in weights]

    def initial(num_domains: int, *, xp: Any, dtype: Any, device: Any) -> Array:
        if num_domains != len(weights):
            raise ValueError(
                f"weights has {len(weights)} domains but init got num_domains={num_domains}"
            )
        return xp.asarray(weights, dtype=dtype, device=device)

    return mixture_transform(_no_signal, identity(), history=history, initial=initial)


def uniform(*, history: int = 0) -> MixtureTransform:
    """The uniform mixture ``1/M``, never updated (``update`` only counts)."""
    return mixture_transform(_no_signal, identity(), history=history)


def temperature(sizes: Sequence[float], t: float = 1.0, *, history: int = 0) -> MixtureTransform:
    """Static mixture ``alpha_m ∝ n_m ** (1 / t)`` (t = 1: natural; t → inf: uniform).

    Args:
        sizes: per-domain sizes ``n_m > 0`` (tokens or samples), length ``M``.
        t: temperature > 0.
        history: mixtures kept on device.

    Returns:
        A ``MixtureTransform`` whose ``init`` must be called with ``num_domains == len(sizes)``.
    """
    if not t > 0:  # t = inf is the uniform limit
        raise ValueError(f"t must be > 0, got {t}")
    sizes = [float(n) for n in sizes]
    if not sizes or any(not 0 < n < math.inf for n in sizes):
        raise ValueError(f"sizes must be a non-empty list of positive numbers, got {sizes}")
    powered = [n ** (1.0 / t) for n in sizes]
    weights = [p / sum(powered) for p in powered]

    def initial(num_domains: int, *, xp: Any, dtype: Any, device: Any) -> Array:
        if num_domains != len(weights):
            raise ValueError(
                f"sizes has {len(weights)} domains but init got num_domains={num_domains}"
            )
        return xp.asarray(weights, dtype=dtype, device=device)

    return mixture_transform(_no_signal, identity(), history=history, initial=initial)


def natural(sizes: Sequence[float], *, history: int = 0) -> MixtureTransform:
    """Static size-proportional mixture ``alpha_m ∝ n_m`` (``temperature`` with t = 1)."""
    return temperature(sizes, 1.0, history=history)
