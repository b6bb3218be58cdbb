"""The run loop shared by every backend: schedule, batches, mixture updates, logging, checkpoints.

A backend supplies an ``Engine`` (its ``TwinTrainer``): the device-side training steps of the proxy
u and the reference w. The loop here is host-side Python over schedule ticks; statistics stay on
device and are read only on logging steps, so the loop itself adds no host synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._transform import MixtureState, MixtureTransform, check_mixture, mixture_summary
from ._utils import Array, to_numpy
from ._weighting import SampleWeighting
from .accounting import DomainStats, domain_means, merge_stats
from .adapt import AdaptState, AdaptTransform
from .config import TrainConfig, make_transform
from .data import Batch, BatchSampler, check_batch
from .schedule import Phase

__all__ = ["Engine", "MixtureRun", "NonFiniteError", "RunResult"]

UpdateFn = Callable[[MixtureState, Any], MixtureState]


class NonFiniteError(FloatingPointError):
    """A loss was not finite and the configuration asked to stop (``nonfinite="raise"``)."""


class Engine(Protocol):
    """Device-side steps of a backend. Batches are host dicts; every return value stays on device.

    ``alpha`` is the mixture ``(M,)`` on device, or ``None`` when the batch was sampled in
    proportion to it (the loss is then the plain batch mean).
    """

    def init_mixture(self, transform: MixtureTransform, num_domains: int) -> MixtureState:
        """``transform.init`` in the engine's namespace, dtype and device."""

    def sync(self) -> None:
        """Twin synchronisation ``w <- u``: parameters AND optimizer state."""

    def probe(self, train: Batch, val: Batch, alpha: Array | None) -> DomainStats:
        """One step of u on ``train`` and of w on ``L_val + gamma * L_train``; u's train stats."""

    def free(self, train: Batch, alpha: Array | None, *, model: str = "proxy") -> DomainStats:
        """One step of one model (``"proxy"`` u or ``"reference"`` w) on ``train``; its stats."""

    def twin_update(self, batch: Batch, state: MixtureState, update: UpdateFn) -> tuple:
        """Evaluate both twins per domain (no grad), step the mixture; ``(state, info)``."""

    def mixture_update(self, state: MixtureState, stats: Any, update: UpdateFn) -> MixtureState:
        """``update(state, stats)`` compiled the backend's way (jit) for on-device statistics."""

    def doremi_step(self, train: Batch, state: MixtureState, update: UpdateFn | None) -> tuple:
        """DoReMi: excess loss vs the frozen reference w, mixture update, proxy step."""

    def doge_step(
        self, train: Batch, val: Batch, state: MixtureState, update: UpdateFn | None
    ) -> tuple:
        """DoGE: per-domain gradient alignment with the validation gradient, update, proxy step."""

    def evaluate(self, batches: list[Batch]) -> np.ndarray:
        """Mean per-sample loss of the proxy on each batch: host ``(len(batches),)``."""

    def weighted_free(
        self, train: Batch, alpha: Array | None, transform: AdaptTransform, state: Any
    ) -> tuple:
        """ADAPT: one proxy step on ``sum_m alpha_m sum_{i in m} w_i l_i / N_m``.

        ``w = transform.gate(s)`` under stop-gradient, with ``s`` the batch's ``score`` column
        (ADAPT-BM25) or ``transform.scores(state, hidden, mask)`` from the hidden states of the
        training forward itself. Returns ``(DomainStats of the unweighted losses, AdaptStepInfo)``.
        """

    def adapt_refresh(
        self, transform: AdaptTransform, state: AdaptState | None, batches: list[Batch], step: int
    ) -> AdaptState:
        """Anchor centroid from the proxy's pooled hidden states (no grad); ``refresh`` at step."""

    def counters(self) -> dict[str, Array]:
        """Device counters: ``nonfinite`` steps and ``first_nonfinite`` step (-1 if none)."""

    def state_dict(self) -> dict:
        """Everything needed to resume: both models, both optimizer states, counters."""

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``."""


@dataclass
class RunResult:
    """What a run produced (host numpy)."""

    domains: tuple[str, ...]
    method: str
    average: np.ndarray  # (M,) time-averaged mixture (the default output)
    last: np.ndarray  # (M,)
    trajectory: np.ndarray  # (T, M) mixture after each update
    steps: int  # proxy optimizer steps taken
    val_domains: tuple[str, ...] = ()
    val_losses: np.ndarray | None = None  # (V,) final proxy loss per validation domain
    metrics: list[dict] = field(default_factory=list)
    weighting: dict | None = None  # per-sample weighting summary (ADAPT): mean weight per domain


class MixtureRun:
    """Learn a mixture with ``config.method`` by driving an ``Engine`` over a ``BatchSampler``.

    Args:
        engine: the backend's twin trainer.
        sampler: the data.
        config: the training configuration.
        transform: optional custom ``MixtureTransform`` (default: from ``config``).
        callback: called with each metrics dict (logging steps), e.g. to write metrics.jsonl.
        anchors: ADAPT's anchor batches (``config.weighting != "none"``); default: the
            sampler's validation sets (``config.adapt_anchor_max`` windows per stream).
        adapt_transform: a custom ``AdaptTransform`` (default ``make_adapt(config)``).
    """

    def __init__(
        self,
        engine: Engine,
        sampler: BatchSampler,
        config: TrainConfig,
        *,
        transform: MixtureTransform | None = None,
        callback: Callable[[dict], None] | None = None,
        anchors: list[Batch] | None = None,
        adapt_transform: AdaptTransform | None = None,
    ) -> None:
        self.engine, self.sampler, self.config, self.callback = engine, sampler, config, callback
        self.domains = tuple(sampler.domains)
        self.transform = transform or make_transform(config, list(sampler.domain_sizes()))
        self.state = engine.init_mixture(self.transform, len(self.domains))
        self.schedule = config.schedule
        self.tick = 0  # schedule position (TANDEM) or main-phase step (other methods)
        self.proxy_step = 0
        self.reference_step = 0
        self.trajectory: list[Array] = []
        self.metrics: list[dict] = []
        self._acc: DomainStats | None = None
        self._info: dict[str, Array] = {}
        self._alpha_host: np.ndarray | None = None
        self._clock = time.perf_counter()
        self.should_stop: Callable[[], bool] | None = None  # polled between ticks (SIGTERM)
        self.weighting: SampleWeighting | None = None  # ADAPT / ADAPT-BM25 (static mixtures)
        if config.weighting != "none":
            vocab = getattr(engine, "vocab_size", None) or sampler.vocab_size
            self.weighting = SampleWeighting(
                config, sampler, anchors, transform=adapt_transform, vocab_size=vocab
            )

    # ---------------------------------------------------------------- schedule
    @property
    def reference_budget(self) -> int:
        """DoReMi's reference-model steps before the main phase (0 for other methods)."""
        if self.config.method != "doremi":
            return 0
        return self.config.reference_steps or self.config.steps

    @property
    def done(self) -> bool:
        """Whether the budget of proxy steps is spent."""
        return self.proxy_step >= self.config.steps

    def step(self) -> None:
        """Advance one tick: a sync, a training step, or a mixture update."""
        cfg = self.config
        if self.reference_step < self.reference_budget:
            if self.reference_step == 0:
                self.engine.sync()  # the reference starts from the proxy's initialisation
            self.engine.free(self._train_batch(uniform=True), self._uniform(), model="reference")
            self.reference_step += 1
            return
        if cfg.method == "tandem":
            self._tandem_tick()
        else:
            self._baseline_tick()
        self.tick += 1

    def _tandem_tick(self) -> None:
        phase = self.schedule.phase(self.tick)
        if phase is Phase.SYNC:
            self.engine.sync()
        elif phase is Phase.UPDATE:
            batch = self.sampler.eval_batch(self.config.eval_per_domain)
            batch = self._checked(batch, len(self.domains))
            self.state, self._info = self.engine.twin_update(
                batch, self.state, self.transform.update
            )
            self._record()
        else:
            train = self._train_batch()
            if phase is Phase.PROBE:
                stats = self.engine.probe(train, self._val_batch(), self._weights())
            else:
                stats = self.engine.free(train, self._weights())
            self._trained(stats)

    def _baseline_tick(self) -> None:
        cfg = self.config
        due = cfg.method in ("doremi", "doge") and self.proxy_step % cfg.update_every == 0
        update = self.transform.update if due else None
        train = self._train_batch()
        if cfg.method == "doremi":
            self.state, stats = self.engine.doremi_step(train, self.state, update)
        elif cfg.method == "doge":
            self.state, stats = self.engine.doge_step(train, self._val_batch(), self.state, update)
        else:
            stats = self._free(train)
            update = self.transform.update if self.proxy_step % cfg.update_every == 0 else None
            if update is not None:  # static mixtures: the update only counts
                self.state = self.engine.mixture_update(self.state, self.state.alpha, update)
        if update is not None:
            self._record()
        self._trained(stats)

    def _free(self, train: Batch) -> DomainStats:
        if self.weighting is None:
            return self.engine.free(train, self._weights())
        return self.weighting.step(self.engine, train, self._weights(), self.proxy_step)

    def _train_batch(self, uniform: bool = False) -> Batch:
        if self.config.sampling == "sample":
            m = len(self.domains)
            alpha = np.full(m, 1 / m) if uniform else self._host_alpha()
            batch = self.sampler.mixture_batch(alpha, self.config.batch_per_domain * m)
        else:
            batch = self.sampler.train_batch(self.config.batch_per_domain)
        return self._checked(batch, len(self.domains))

    def _checked(self, batch: Batch, num_domains: int) -> Batch:
        # host-side numpy checks: a bad id never reaches the device, where it would be dropped
        # silently (JAX) or crash the process (CUDA), and no device value is read
        vocab = getattr(self.engine, "vocab_size", None) or self.sampler.vocab_size
        return check_batch(batch, num_domains=num_domains, vocab_size=vocab)

    def _val_batch(self) -> Batch:
        batch = self.sampler.val_batch(self.config.val_batch_size)
        return self._checked(batch, len(self.sampler.val_domains))

    def _weights(self) -> Array | None:
        return None if self.config.sampling == "sample" else self.state.alpha

    def _uniform(self) -> Array | None:
        if self.config.sampling == "sample":
            return None
        m = len(self.domains)
        return self.state.alpha * 0 + 1.0 / m

    def _host_alpha(self) -> np.ndarray:
        # sampling in proportion to alpha needs it on the host: one read per mixture update
        if self._alpha_host is None:
            self._alpha_host = to_numpy(self.state.alpha).astype(np.float64)
            self._alpha_host /= self._alpha_host.sum()
        return self._alpha_host

    def _record(self) -> None:
        self.trajectory.append(self.state.alpha)
        self._alpha_host = None
        if self.config.debug:
            check_mixture(
                self.state, floor=self.config.floor if self.config.method == "tandem" else 0
            )

    def _trained(self, stats: DomainStats) -> None:
        self._acc = stats if self._acc is None else merge_stats(self._acc, stats)
        self.proxy_step += 1
        cfg = self.config
        if cfg.eval_every and self.proxy_step % cfg.eval_every == 0:
            self.log(evaluate=True)
        elif self.proxy_step % cfg.log_every == 0:
            self.log()

    # ---------------------------------------------------------------- logging
    def log(self, *, evaluate: bool = False) -> dict:
        """Read device statistics (a host sync: logging steps only) into a metrics dict."""
        row: dict[str, Any] = {"step": self.proxy_step, "tick": self.tick}
        if self.config.method == "tandem":
            row["episode"] = self.schedule.episode_index(self.tick)
        if self._acc is not None:
            means, present = domain_means(self._acc)
            means, present = to_numpy(means), to_numpy(present)
            row["train_loss"] = {d: float(v) for d, v, p in zip(self.domains, means, present) if p}
            row["train_loss_avg"] = float(
                to_numpy(self._acc.sums).sum() / to_numpy(self._acc.counts).sum()
            )
            self._acc = None
        row["alpha"] = dict(zip(self.domains, map(float, to_numpy(self.state.alpha))))
        for key, value in self._info.items():
            value = to_numpy(value)
            row[key] = dict(zip(self.domains, map(float, value))) if value.ndim else float(value)
        row["mixture_updates"] = int(to_numpy(self.state.count))
        row["skipped_updates"] = int(to_numpy(self.state.skipped))
        row["missing"] = dict(zip(self.domains, map(int, to_numpy(self.state.missing))))
        if self.weighting is not None:
            row.update(self.weighting.log_row(self.domains))
        counters = {k: int(to_numpy(v)) for k, v in self.engine.counters().items()}
        row.update(counters)
        if evaluate:
            row["val_loss"] = self.evaluate()
        row["elapsed_s"] = time.perf_counter() - self._clock
        self.metrics.append(row)
        if counters.get("nonfinite", 0) and self.config.nonfinite == "raise":
            raise NonFiniteError(
                f"non-finite training loss at proxy step {counters.get('first_nonfinite')} "
                f"(seen at step {self.proxy_step}; last per-domain train losses: "
                f"{row.get('train_loss')}); set nonfinite='skip' to skip such steps"
            )
        if self.callback is not None:
            self.callback(row)
        return row

    def evaluate(self) -> dict[str, float]:
        """Proxy loss per validation domain on the sampler's fixed validation sets."""
        sets = self.sampler.validation_sets(self.config.eval_max_per_domain)
        losses = self.engine.evaluate(sets)
        return dict(zip(self.sampler.val_domains, map(float, losses)))

    # ---------------------------------------------------------------- running
    def run(
        self,
        progress: bool = True,
        *,
        checkpoint: Callable[[MixtureRun], None] | None = None,
        checkpoint_every: int = 0,
    ) -> RunResult:
        """Run until ``config.steps`` proxy steps; returns the learned mixture.

        Args:
            progress: show a progress bar (step, episode, loss, top weights).
            checkpoint: called with this run every ``checkpoint_every`` proxy steps (and not at
                the end: the caller saves the final state itself).
            checkpoint_every: 0 disables periodic checkpoints.
        """
        bar = _progress(self.config.steps, self.proxy_step, progress)
        while not self.done and not (self.should_stop is not None and self.should_stop()):
            before = self.proxy_step
            self.step()
            due = checkpoint_every and self.proxy_step != before
            if checkpoint is not None and due and self.proxy_step % checkpoint_every == 0:
                checkpoint(self)
            if bar is not None and self.proxy_step != before:
                bar.update(self.proxy_step - before)
                if self.metrics and self.metrics[-1]["step"] == self.proxy_step:
                    bar.set_postfix_str(_postfix(self.metrics[-1]))
        last = self.metrics[-1] if self.metrics else {}
        if self.done and (last.get("step") != self.proxy_step or "val_loss" not in last):
            self.log(evaluate=True)  # not when stopped early: a resumed run logs exactly once
        if bar is not None:
            bar.close()
        return self.result()

    def result(self) -> RunResult:
        """The run's outputs on the host."""
        summary = mixture_summary(self.state)
        trajectory = (
            np.stack([to_numpy(a) for a in self.trajectory])
            if self.trajectory
            else np.zeros((0, len(self.domains)))
        )
        val = next((m["val_loss"] for m in reversed(self.metrics) if "val_loss" in m), None)
        return RunResult(
            domains=self.domains,
            method=self.config.method,
            average=to_numpy(summary.average).astype(np.float64),
            last=to_numpy(summary.last).astype(np.float64),
            trajectory=trajectory.astype(np.float64),
            steps=self.proxy_step,
            val_domains=tuple(self.sampler.val_domains),
            val_losses=None if val is None else np.array(list(val.values())),
            metrics=list(self.metrics),
            weighting=None if self.weighting is None else self.weighting.summary(self.domains),
        )

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Position, mixture state, trajectory, sampler and engine state: a bitwise resume point."""
        return {
            "tick": self.tick,
            "proxy_step": self.proxy_step,
            "reference_step": self.reference_step,
            "mixture": self.state,
            "trajectory": list(self.trajectory),
            "acc": self._acc,
            "info": dict(self._info),
            "sampler": self.sampler.state_dict(),
            "engine": self.engine.state_dict(),
            "metrics": list(self.metrics),
            "weighting": None if self.weighting is None else self.weighting.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may come back as numpy: the engine moves them)."""
        self.tick, self.proxy_step = int(state["tick"]), int(state["proxy_step"])
        self.reference_step = int(state["reference_step"])
        self.engine.load_state_dict(state["engine"])
        self.state = self.engine.to_device_tree(state["mixture"])
        self.trajectory = [self.engine.to_device_tree(a) for a in state["trajectory"]]
        self._acc = None if state["acc"] is None else self.engine.to_device_tree(state["acc"])
        self._info = {k: self.engine.to_device_tree(v) for k, v in state["info"].items()}
        self.sampler.load_state_dict(state["sampler"])
        self.metrics = list(state["metrics"])
        self._alpha_host = None
        if self.weighting is not None:
            if state.get("weighting") is None:
                raise ValueError("the checkpoint has no per-sample weighting state")
            self.weighting.load_state_dict(state["weighting"], self.engine.to_device_tree)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: a bar on terminals only (no megabytes of carriage returns in CI logs)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)


def _postfix(row: dict) -> str:
    top = sorted(row["alpha"].items(), key=lambda kv: -kv[1])[:3]
    parts = [f"loss={row.get('train_loss_avg', float('nan')):.3f}"]
    if "episode" in row:
        parts.insert(0, f"ep={row['episode']}")
    parts.append(" ".join(f"{d}={w:.2f}" for d, w in top))
    if "weights" in row:
        parts.append(f"w={row['weights']['mean']:.2f}")
    return " ".join(parts)
