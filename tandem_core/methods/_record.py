"""The method record: what a mixing method is to the rest of tandem (docs/architecture.md).

A method is one record: its name, its ``MixtureTransform`` factory, its hyper-parameter dataclass
(the keys it owns in the ``[train]`` table), the ``Signal`` it reads, and its ``Plan`` (what the
run loop schedules: twin episodes, or a measurement every N steps with an optional reference
model trained first). Engines measure signals and never see the method; the loop asks the plan.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._transform import MixtureTransform
from ..errors import ConfigError
from ..schedule import Schedule

__all__ = [
    "Episodes",
    "EveryStep",
    "Method",
    "Plan",
    "Signal",
    "check_fields",
    "planned_updates",
    "check_types",
]


class Signal(str, enum.Enum):
    """What a method reads, measured on device by a backend's engine (a small closed set).

    Adding a method that reads one of these is one file; adding a signal is one function in each
    backend's engine (docs/architecture.md).
    """

    NONE = "none"  # nothing: a fixed mixture (update(state, None) only counts)
    PROXY_LOSSES = "proxy_losses"  # DomainStats: the proxy's per-domain mean loss on the batch
    TWIN = "twin"  # TwinStats of proxy u and reference w after K probe steps (twin episodes)
    EXCESS_LOSS = "excess_loss"  # DomainStats: per-token max(l_proxy - l_ref, 0), frozen ref
    ALIGNMENT = "alignment"  # AlignmentStats: <grad L^m_train(u), grad L_val(u)> (M,), norms
    SAMPLE_SCORES = "sample_scores"  # (B,): per-sample scores from hidden states (ADAPT weighting)

    @property
    def needs_val(self) -> bool:
        """Whether measuring this signal reads a validation batch."""
        return self in (Signal.TWIN, Signal.ALIGNMENT)


class Episodes(NamedTuple):
    """Twin episodes: SYNC, PROBE x K, UPDATE (the signal is measured), FREE x E (TANDEM)."""

    schedule: Schedule
    gamma: float = 1.0  # the reference's objective is L_val + gamma * L_train


class EveryStep(NamedTuple):
    """One proxy step per tick, with a mixture update every ``update_every`` steps.

    The signal is measured on the step's batch and the mixture updated BEFORE the step uses it
    (never a stale mixture).
    """

    update_every: int = 1
    reference: bool = False  # a reference model is trained first, then frozen
    reference_steps: int = 0  # its budget (0: the proxy's, ``train.steps``)
    # the mixture the reference trains on: "uniform", "natural" (tokens per domain), or a file
    # of weights (a mixture.json, a JSON list or {domain: weight})
    reference_mixture: str = "uniform"
    rounds: int = 1  # rounds > 1: each round starts afresh, its reference on the last output


Plan = Episodes | EveryStep


def planned_updates(plan: Plan, steps: int) -> int:
    """The mixture updates a run of ``steps`` main-phase proxy steps makes under ``plan``.

    Episodes: one after each episode's K probe steps (``Schedule.updates``); every-step plans:
    one before every ``update_every``-th step, the first before step 0.
    """
    if isinstance(plan, Episodes):
        return plan.schedule.updates(steps)
    return -(-steps // plan.update_every)


@dataclass(frozen=True)
class Method:
    """A mixing method as the CLI, the API, the run loop and the shared tests see it.

    Attributes:
        name: the ``train.method`` value (and the entry-point name in ``tandem.methods``).
        signal: the ``Signal`` its update reads.
        params: a frozen dataclass of its hyper-parameters (validated in ``__post_init__``); its
            fields are the method's keys in the ``[train]`` table.
        transform: ``transform(params, *, sizes, history, [num_domains, updates, lr]) ->
            MixtureTransform``; ``sizes`` are the tokens per domain (``natural`` and
            ``temperature`` read them); ``num_domains`` and ``updates`` (the run's number of
            mixture updates, ``planned_updates``) are passed when the function accepts them
            (``tandem``'s budget step size and tail average read them), and so is ``lr``, the
            proxy's learning rate, when the run gives it (``doge``'s reference step reads it).
            Call it through ``build``.
        plan: ``plan(params) -> Episodes | EveryStep``.
        summary: one line for listings.
    """

    name: str
    signal: Signal
    params: type
    transform: Callable[..., MixtureTransform]
    plan: Callable[[Any], Plan]
    summary: str = ""

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.params):
            raise TypeError(f"method {self.name!r}: params must be a dataclass type")
        if not isinstance(self.signal, Signal):
            raise TypeError(f"method {self.name!r}: signal must be a tandem_core Signal")

    @property
    def keys(self) -> tuple[str, ...]:
        """The method's keys in the ``[train]`` table."""
        return tuple(f.name for f in dataclasses.fields(self.params))

    def build(
        self,
        params: Any,
        *,
        sizes: Any = None,
        history: int = 0,
        num_domains: int | None = None,
        updates: int | None = None,
        lr: float | None = None,
    ) -> MixtureTransform:
        """``transform(params, ...)`` with the run's facts that the function accepts.

        A plugin written before ``num_domains`` / ``updates`` / ``lr`` existed keeps working:
        they are passed only to a ``transform`` that names them (or takes ``**kwargs``); ``lr``
        only when given.
        """
        run: dict[str, Any] = {"num_domains": num_domains, "updates": updates}
        if lr is not None:
            run["lr"] = lr
        accepted = inspect.signature(self.transform).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            run = {k: v for k, v in run.items() if k in accepted}
        return self.transform(params, sizes=sizes, history=history, **run)

    def make_transform(
        self,
        values: Mapping[str, Any] = (),
        *,
        num_domains: int,
        steps: int | None = None,
        sizes: Any = None,
        history: int | None = None,
        lr: float | None = None,
    ) -> MixtureTransform:
        """The transform a run of this method uses, for a loop of your own.

        ``make_params(values)`` (unset keys take the library defaults), then ``build`` with the
        run's facts: ``steps`` is the run's main-phase proxy steps (its mixture updates are
        ``planned_updates(plan, steps)``, which TANDEM's budget step size and tail average read).
        ``history``: mixtures kept for the trajectory, ``(history, M)`` (default: every update
        of the run, as ``MixtureRun`` keeps them; 0 without ``steps``).

        Examples:
            >>> from tandem_core.methods import get_method
            >>> t = get_method("tandem").make_transform(num_domains=5, steps=600)
            >>> t.init(5).alpha.tolist() == [0.2] * 5
            True
        """
        params = self.make_params(values)
        updates = None if steps is None else planned_updates(self.plan(params), steps)
        if history is None:
            history = updates or 0
        return self.build(
            params, sizes=sizes, history=history, num_domains=num_domains, updates=updates, lr=lr
        )

    def make_params(self, values: Mapping[str, Any] = ()) -> Any:
        """The validated hyper-parameters from ``{key: value}`` (unset keys take defaults)."""
        values = dict(values)
        unknown = sorted(set(values) - set(self.keys))
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} for method {self.name!r}; its keys: {list(self.keys)}"
            )
        return self.params(**values)


def check_types(obj: Any, prefix: str = "") -> None:
    """Check every field of a dataclass instance against its annotation (``ConfigError``).

    ``int`` is accepted for ``float`` fields; ``bool`` only where annotated.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        args = typing.get_args(hint)
        allowed = tuple(a for a in args if a is not type(None)) or (hint,)
        if allowed == (Any,) or (value is None and type(None) in args):
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            continue
        if isinstance(value, bool) and bool not in allowed:
            raise ConfigError(f"{prefix}{f.name} must be {_names(allowed)}, got a bool ({value})")
        if not isinstance(value, allowed):
            raise ConfigError(
                f"{prefix}{f.name} must be {_names(allowed)}, got {type(value).__name__} {value!r}"
            )


def check_fields(
    obj: Any,
    *,
    choices: Mapping[str, Sequence[str]] | None = None,
    positive: Sequence[str] = (),
    nonnegative: Sequence[str] = (),
    below_one: Sequence[str] = (),
    prefix: str = "",
) -> None:
    """Types, then choices and ranges of a config dataclass; ``ConfigError`` names the key.

    Every range check also rejects NaN and infinity; ``None`` (an unset optional) passes.
    """
    check_types(obj, prefix)
    for key, allowed in (choices or {}).items():
        if getattr(obj, key) not in allowed:
            raise ConfigError(f"{prefix}{key}={getattr(obj, key)!r} is not one of {tuple(allowed)}")
    for keys, test, what in (
        (positive, lambda v: 0 < v < math.inf, "> 0 and finite"),
        (nonnegative, lambda v: 0 <= v < math.inf, "finite and >= 0"),
        (below_one, lambda v: 0 <= v < 1, "in [0, 1)"),
    ):
        for key in keys:
            value = getattr(obj, key)
            if value is not None and not test(value):
                raise ConfigError(f"{prefix}{key} must be {what}, got {value}")


def _names(types: tuple) -> str:
    return " or ".join(getattr(t, "__name__", str(t)) for t in types)
