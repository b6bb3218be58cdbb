"""The TANDEM episode schedule as data: what a custom loop does at each tick.

An episode (docs/methods.md, "TANDEM: Episode schedule") is ``SYNC, PROBE x K, UPDATE,
FREE x E_free`` (``K + E_free + 2`` ticks):

- ``SYNC``: copy the proxy u into the reference w (parameters AND optimizer state).
- ``PROBE``: one training step of both twins on the same train batch (w also on a val batch).
- ``UPDATE``: evaluate both twins per domain, compute Delta, step the mixture.
- ``FREE``: one proxy training step under the new mixture.

Meaning of ``E`` (the paper leaves it open): with ``episode="free"`` (default) E counts the free
proxy steps after the update, so an episode trains the proxy ``K + E`` steps. With
``episode="total"`` E counts all proxy steps of the episode, probing included (``E >= K``,
``E - K`` free steps).

Example loop::

    sched = tc.Schedule(probe_steps=5, free_steps=20)
    for tick in range(num_episodes * sched.length):
        match sched.phase(tick):
            case tc.Phase.SYNC: w, opt_w = copy(u, opt_u)
            case tc.Phase.PROBE: step(u); step(w)
            case tc.Phase.UPDATE: state = transform.update(state, twin_stats(u, w))
            case tc.Phase.FREE: step(u)
"""

from __future__ import annotations

import enum
import math
import operator
from typing import Any, NamedTuple

from ._utils import Array, array_device, namespace

__all__ = [
    "EPISODE_MEANINGS",
    "Phase",
    "Schedule",
    "budget_step_size",
    "episode",
    "phase",
    "phase_code",
]

EPISODE_MEANINGS = ("free", "total")


class Phase(enum.IntEnum):
    """What a tick of the episode does."""

    SYNC = 0
    PROBE = 1
    UPDATE = 2
    FREE = 3


class _Layout(NamedTuple):
    probe_steps: int
    free_steps: int
    episode: str = "free"


class Schedule(_Layout):
    """Episode layout: ``probe_steps`` (K) and ``free_steps`` (E, read according to ``episode``).

    Validated on construction: K an integer >= 1, E an integer >= 0 (>= K with
    ``episode="total"``), ``episode`` one of ``EPISODE_MEANINGS``; ``ValueError`` otherwise.
    """

    __slots__ = ()

    def __new__(cls, probe_steps: int, free_steps: int, episode: str = "free") -> Schedule:
        """A validated ``Schedule`` (raises ``ValueError`` naming the bad field)."""
        sched = super().__new__(cls, probe_steps, free_steps, episode)
        _validate(sched)
        return sched

    @property
    def free(self) -> int:
        """Free proxy steps per episode (after the update)."""
        _validate(self)
        return self.free_steps if self.episode == "free" else self.free_steps - self.probe_steps

    @property
    def length(self) -> int:
        """Ticks per episode: ``K + free + 2``."""
        return self.probe_steps + self.free + 2

    @property
    def proxy_steps(self) -> int:
        """Proxy optimizer steps per episode: ``K + free``."""
        return self.probe_steps + self.free

    def phase(self, tick: int) -> Phase:
        """The ``Phase`` of ``tick`` (a Python int >= 0)."""
        return Phase(_code(_tick(tick) % self.length, self.probe_steps))

    def episode_index(self, tick: int) -> int:
        """Index of the episode that ``tick`` belongs to."""
        return _tick(tick) // self.length

    def updates(self, steps: int) -> int:
        """Mixture updates in a run of ``steps`` proxy steps (one after each episode's K probes).

        Examples:
            >>> Schedule(5, 20).updates(600)  # the probes of episode 24 end at step 605
            24
        """
        steps = _tick(steps)
        return (
            0
            if steps <= self.probe_steps
            else (steps - self.probe_steps - 1) // (self.proxy_steps) + 1
        )

    def proxy_steps_before(self, tick: int) -> int:
        """Proxy optimizer steps taken before ``tick`` (for logging in the user's step units)."""
        done, j = divmod(_tick(tick), self.length)
        within = 0 if j == 0 else min(j - 1, self.probe_steps) + max(j - self.probe_steps - 2, 0)
        return done * self.proxy_steps + within


def budget_step_size(scale: float, num_domains: int, updates: int) -> float:
    """The mirror-descent step size of a run's budget: ``scale * sqrt(ln M / T)``.

    For T exponentiated-gradient steps on the simplex of M domains with gradients of unit
    size (TANDEM's RMS-normalised Delta), ``sqrt(2 ln M / T)`` is the step size that minimises
    the regret bound: a longer run takes smaller steps and the total movement grows like
    ``sqrt(T)``, not like T (docs/methods.md, "TANDEM: Defaults").

    Args:
        scale: the constant ``c`` > 0.
        num_domains: M >= 2 (M = 1: nothing to mix, the step is ``scale``).
        updates: T, the run's mixture updates (``Schedule.updates``); T < 1 counts as 1.

    Returns:
        The step size (a Python float).

    Examples:
        >>> round(budget_step_size(4.0, 5, 24), 4)
        1.0358
    """
    if not 0 < scale < math.inf:
        raise ValueError(f"scale must be > 0 and finite, got {scale}")
    m = operator.index(num_domains)
    if m < 1:
        raise ValueError(f"num_domains must be >= 1, got {num_domains}")
    if m == 1:
        return float(scale)
    return float(scale) * math.sqrt(math.log(m) / max(operator.index(updates), 1))


def _validate(s: Schedule) -> None:
    if s.episode not in EPISODE_MEANINGS:
        raise ValueError(
            f"episode={s.episode!r} is not supported; choose one of {EPISODE_MEANINGS}"
        )
    for name, value, low in (
        ("probe_steps (K)", s.probe_steps, 1),
        ("free_steps (E)", s.free_steps, 0),
    ):
        if isinstance(value, bool) or not _is_index(value):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if s.episode == "total" and s.free_steps < s.probe_steps:
        raise ValueError(
            f"with episode='total', E={s.free_steps} counts the K={s.probe_steps} probing steps: "
            "E must be >= K"
        )


def _is_index(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _tick(tick: Any) -> int:
    if isinstance(tick, bool) or not _is_index(tick) or tick < 0:
        raise ValueError(f"tick must be an integer >= 0, got {tick!r}")
    return operator.index(tick)


def _code(j: Any, k: int) -> Any:
    if j == 0:
        return Phase.SYNC
    if j <= k:
        return Phase.PROBE
    return Phase.UPDATE if j == k + 1 else Phase.FREE


def phase(step: int, probe_steps: int, free_steps: int, *, episode: str = "free") -> Phase:
    """The ``Phase`` of schedule tick ``step`` for K = ``probe_steps``, E = ``free_steps``.

    Args:
        step: tick index >= 0 (ticks, not proxy steps: see ``Schedule.proxy_steps_before``).
        probe_steps: K >= 1.
        free_steps: E >= 0 (meaning set by ``episode``).
        episode: ``"free"`` (E = free steps after the update) or ``"total"`` (E = K + free).

    Returns:
        ``Phase.SYNC | PROBE | UPDATE | FREE``.

    Examples:
        >>> [phase(t, 2, 1).name for t in range(5)]
        ['SYNC', 'PROBE', 'PROBE', 'UPDATE', 'FREE']
    """
    return Schedule(probe_steps, free_steps, episode).phase(step)


def episode(step: int, probe_steps: int, free_steps: int, *, episode: str = "free") -> int:
    """The episode index of schedule tick ``step`` (see ``phase``)."""
    return Schedule(probe_steps, free_steps, episode).episode_index(step)


def phase_code(step: Array, probe_steps: int, free_steps: int, *, episode: str = "free") -> Array:
    """Array version of ``phase`` for jit-compiled loops: int32 codes of ``Phase`` (``lax.switch``).

    Args:
        step: integer array of ticks, any shape.
        probe_steps: K >= 1.
        free_steps: E >= 0.
        episode: meaning of E.

    Returns:
        int32 array of the shape of ``step``.
    """
    sched = Schedule(probe_steps, free_steps, episode)
    xp = namespace(step)
    j = step % sched.length
    k = sched.probe_steps
    code = xp.full(step.shape, int(Phase.FREE), dtype=xp.int32, device=array_device(step))
    code = xp.where(j == k + 1, int(Phase.UPDATE), code)
    code = xp.where((j >= 1) & (j <= k), int(Phase.PROBE), code)
    return xp.where(j == 0, int(Phase.SYNC), code)
