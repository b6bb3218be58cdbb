"""The engine contract: what a backend's trainer does for the run loop (docs/architecture.md).

An engine trains the proxy u and the reference w and measures ``Signal``s on device; it never
sees a method's name. Batches enter as host dicts (``tokens``, ``labels``, ``domain`` and, for
ADAPT-BM25, ``score``); every value an engine returns stays on device until the loop logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._transform import MixtureState, MixtureTransform
from .._utils import Array
from ..accounting import DomainStats
from ..adapt import AdaptTransform, WeightedStepInfo
from ..data import Batch
from ..methods import Signal

__all__ = ["Engine", "UpdateFn"]

UpdateFn = Callable[[MixtureState, Any], MixtureState]  # a MixtureTransform's update


@runtime_checkable
class Engine(Protocol):
    """Device-side steps of a backend, driven by ``MixtureRun`` (and by the Trainer integrations).

    ``model`` is ``"proxy"`` (u) or ``"reference"`` (w). Alpha-weighted objectives are
    ``sum_m alpha_m L^m`` over the batch's per-domain sub-batches, or the plain batch mean when
    ``train.sampling="sample"`` drew the batch in proportion to alpha (``alpha`` is then ``None``).
    """

    vocab_size: int | None  # token ids must be below it (None: the data decides)
    # Optional, for runs of several processes (the loop reads both with getattr):
    #   processes: int, the number of processes computing this run (default 1);
    #   any_process(flag: bool) -> bool, True on every process when any passed True (one
    #   collective; the loop calls it on the same ticks everywhere, see MixtureRun.stop_requested)

    def init_mixture(self, transform: MixtureTransform, num_domains: int) -> MixtureState:
        """``transform.init`` in the engine's namespace, dtype and device."""

    def to_device(self, tree: Any) -> Any:
        """A nest of host (numpy) arrays on the engine's device, dtypes kept."""

    def sync(self) -> None:
        """Twin synchronisation ``w <- u``: parameters AND optimizer state."""

    def probe(self, train: Batch, val: Batch, alpha: Array | None, *, gamma: float) -> DomainStats:
        """One step of u on ``L_train`` and of w on ``L_val + gamma * L_train``.

        Both twins see the SAME train batch; returns u's per-domain train statistics.
        """

    def step(
        self,
        train: Batch,
        state: MixtureState,
        *,
        model: str = "proxy",
        signal: Signal = Signal.NONE,
        update: UpdateFn | None = None,
        val: Batch | None = None,
    ) -> tuple[MixtureState, DomainStats]:
        """One optimizer step of ``model`` on the alpha-weighted train objective.

        With ``update``: ``signal`` is measured on this batch first (``val`` for signals that read
        one), the whole batch's statistics (every micro-batch and rank) update the mixture, and the
        step uses the NEW alpha. Returns the mixture state and the step's per-domain statistics.
        """

    def measure(
        self,
        signal: Signal,
        batch: Batch,
        state: MixtureState,
        update: UpdateFn,
        *,
        val: Batch | None = None,
    ) -> tuple[MixtureState, dict[str, Array]]:
        """Measure ``signal`` on ``batch`` (eval mode, no grad, no training); update the mixture.

        Returns the state and diagnostics (``Signal.TWIN``: ``delta``, ``twin_distance``).
        """

    def weighted_step(
        self, train: Batch, alpha: Array | None, scorer: AdaptTransform, scorer_state: Any
    ) -> tuple[DomainStats, WeightedStepInfo]:
        """``Signal.SAMPLE_SCORES``: one proxy step on per-sample weighted losses.

        The objective is ``sum_m alpha_m sum_{i in m} w_i l_i / N_m`` with ``w = scorer.gate(s)``
        under stop-gradient; ``s`` is the batch's ``score`` column, or
        ``scorer.scores(scorer_state, hidden, input_mask)`` from the training forward's own hidden
        states. Returns the unweighted losses' statistics and the weights.
        """

    def anchor_refresh(
        self, scorer: AdaptTransform, scorer_state: Any, batches: list[Batch], step: int
    ) -> Any:
        """``scorer.refresh`` with the proxy's pooled hidden states of ``batches`` (no grad).

        ``scorer_state`` ``None`` starts from ``scorer.init`` with the model's hidden size.
        """

    def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` for a pure function of device arrays, compiled the backend's way.

        Jit on JAX, eager on torch; ``fn`` is static (one compilation per function object).
        """

    def evaluate(self, batches: list[Batch]) -> np.ndarray:
        """Mean per-sample loss of the proxy on each batch: host float64 ``(len(batches),)``."""

    def predict_logits(self, batch: Batch) -> Array:
        """The proxy's logits ``(B, T, V)`` on ``batch["tokens"]`` (eval mode, no grad)."""

    def counters(self) -> dict[str, Array]:
        """Device counters: ``nonfinite`` steps and ``first_nonfinite`` step (-1 if none)."""

    def state_dict(self) -> dict:
        """Everything needed to resume: both models, both optimizer states, counters."""

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may come back as numpy)."""
