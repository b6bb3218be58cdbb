"""The run loop shared by every backend and method: plan, batches, mixture updates, logging.

The loop knows neither methods nor backends by name: it asks the method's ``Plan`` what a tick
does (twin episodes, or a step with a measurement every N steps, after an optional reference
phase) and the ``Engine`` to do it, measuring the method's ``Signal``. Statistics stay on device
and are read only on logging steps, so the loop itself adds no host synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .._transform import MixtureTransform, check_mixture, mixture_summary
from .._utils import Array, to_numpy
from ..accounting import DomainStats, merge_stats
from ..adapt import AdaptTransform
from ..data import Batch, BatchSampler, check_batch
from ..errors import ConfigError, NonFiniteError
from ..methods import Episodes, Signal, planned_updates
from ..mixture import fixed
from ..schedule import Phase
from .config import TrainConfig
from .engine import Engine
from .reference import reference_weights
from .report import RunResult, mixture_row, postfix, progress_bar, run_result
from .weighting import SampleWeighting

__all__ = ["MixtureRun", "RunResult"]


class MixtureRun:
    """Learn a mixture with ``config.method`` by driving an ``Engine`` over a ``BatchSampler``.

    Args:
        engine: the backend's engine (``backend.make_engine``).
        sampler: the data.
        config: the training configuration (its method and that method's parameters).
        transform: optional custom ``MixtureTransform`` (default: the method's).
        callback: called with each metrics dict (logging steps), e.g. to write metrics.jsonl.
        anchors: ADAPT's anchor batches (``config.weighting != "none"``); default: the
            sampler's validation sets (``config.adapt.adapt_anchor_max`` windows per stream).
        adapt_transform: a custom ``AdaptTransform`` (default from ``config.adapt``).
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
        self.method = config.method_record
        self.plan = self.method.plan(config.params)
        self.signal = self.method.signal
        _check_signal(self.signal, config)
        if self.signal is not Signal.NONE and isinstance(self.plan, Episodes):
            # the first mixture update follows K probe steps: a shorter run learns nothing
            # (every-step plans update before their first step)
            sched = self.plan.schedule
            if config.steps <= sched.probe_steps:
                raise ConfigError(
                    f"train.steps={config.steps} ends before method={config.method!r} updates "
                    f"the mixture once (after probe_steps={sched.probe_steps} proxy steps; one "
                    f"episode is {sched.proxy_steps}): set train.steps >= {sched.proxy_steps}"
                )
        self.domains = tuple(sampler.domains)
        sizes = list(sampler.domain_sizes())
        self.transform = transform or self.method.build(
            config.params,
            sizes=sizes,
            num_domains=len(self.domains),
            updates=planned_updates(self.plan, config.steps),
            lr=config.lr,
        )
        self.state = engine.init_mixture(self.transform, len(self.domains))
        self.episodic = isinstance(self.plan, Episodes)
        self.round = 0  # rounds > 1: the round under way (each one config.steps proxy steps)
        self.round_mixtures: list[np.ndarray] = []  # the output (average) of each finished round
        if self.reference_budget:  # the plan's reference mixture (docs/methods.md, "DoReMi")
            weights = reference_weights(self.plan.reference_mixture, self.domains, sizes)
            self._reference_to(weights)
        self._initial: dict | None = None  # rounds > 1: the engine at its start (a host copy)
        if self.rounds > 1:
            self._initial = _initial_engine(engine, config, self.plan)
        self.tick = 0  # schedule position (episodes) or main-phase step (every-step plans)
        self.proxy_step = 0  # counted over all rounds
        self.reference_step = 0
        self.trajectory: list[Array] = []
        self.metrics: list[dict] = []
        self._acc: DomainStats | None = None
        self._info: dict[str, Array] = {}
        self._alpha_host: np.ndarray | None = None
        self._clock = time.perf_counter()
        self.should_stop: Callable[[], bool] | None = None  # polled between ticks (SIGTERM)
        self._polls = 0  # should_stop calls: the same count on every process
        self.weighting: SampleWeighting | None = None  # ADAPT / ADAPT-BM25 (fixed mixtures)
        if config.weighting != "none":
            vocab = engine.vocab_size or sampler.vocab_size
            self.weighting = SampleWeighting(
                config, sampler, anchors, transform=adapt_transform, vocab_size=vocab
            )

    # ---------------------------------------------------------------- plan
    @property
    def schedule(self) -> Any:
        """The episode ``Schedule`` of an episodic plan (``None``: one tick per proxy step)."""
        return self.plan.schedule if self.episodic else None

    @property
    def reference_budget(self) -> int:
        """Reference-model steps before the main phase (plans with a reference model)."""
        if self.episodic or not self.plan.reference:
            return 0
        return self.plan.reference_steps or self.config.steps

    @property
    def rounds(self) -> int:
        """Rounds of the plan (iterated DoReMi): each one ``config.steps`` proxy steps."""
        return 1 if self.episodic else self.plan.rounds

    @property
    def total_steps(self) -> int:
        """Proxy steps of the whole run, over all rounds."""
        return self.config.steps * self.rounds

    @property
    def done(self) -> bool:
        """Whether the budget of proxy steps (of every round) is spent."""
        return self.proxy_step >= self.total_steps

    def step(self) -> None:
        """Advance one tick: a sync, a training step, or a mixture update."""
        if self.proxy_step >= (self.round + 1) * self.config.steps:
            self._next_round()
        if self.reference_step < self.reference_budget:
            if self.reference_step == 0:
                self.engine.sync()  # the reference starts from the proxy's initialisation
            train = self._train_batch(reference=True)
            self.engine.step(train, self._reference_state, model="reference")
            self.reference_step += 1
            return
        if self.episodic:
            self._episode_tick()
        else:
            self._every_step_tick()
        self.tick += 1

    def _reference_to(self, weights: np.ndarray) -> None:
        """The reference model's mixture from now on: host weights ``(M,)`` (float64)."""
        self._reference_weights = np.asarray(weights, dtype=np.float64)
        self._reference_state = self.engine.init_mixture(
            fixed(self._reference_weights), len(self.domains)
        )

    def _next_round(self) -> None:
        """Iterated DoReMi: the next round starts afresh, its reference on this round's output.

        The engine returns to its initial state (both models, optimizers, counters), the
        mixture to the transform's ``init``; the sampler runs on (new batches).
        """
        average = mixture_summary(self.state).average  # the round's output, as run_result's
        self.round_mixtures.append(to_numpy(average).astype(np.float64))
        self.round += 1
        self.engine.load_state_dict(_host_copy(self._initial))  # a copy: loads may alias it
        self._reference_to(self.round_mixtures[-1])
        self.state = self.engine.init_mixture(self.transform, len(self.domains))
        self.tick, self.reference_step = 0, 0
        self.trajectory, self._info, self._alpha_host = [], {}, None

    def _episode_tick(self) -> None:
        phase = self.plan.schedule.phase(self.tick)
        if phase is Phase.SYNC:
            self.engine.sync()
        elif phase is Phase.UPDATE:
            batch = self.sampler.eval_batch(self.config.eval_per_domain)
            batch = self._checked(batch, len(self.domains))
            self.state, self._info = self.engine.measure(
                self.signal, batch, self.state, self.transform.update
            )
            self._record()
        else:
            train = self._train_batch()
            if phase is Phase.PROBE:
                stats = self.engine.probe(
                    train, self._val_batch(), self._weights(), gamma=self.plan.gamma
                )
            else:
                self.state, stats = self.engine.step(train, self.state)
            self._trained(stats)

    def _every_step_tick(self) -> None:
        due = self.tick % self.plan.update_every == 0  # tick: the round's proxy step
        train = self._train_batch()
        if self.weighting is not None:
            stats = self.weighting.step(self.engine, train, self._weights(), self.proxy_step)
        if self.signal is Signal.NONE:
            if self.weighting is None:
                self.state, stats = self.engine.step(train, self.state)
            if due:  # a fixed mixture: the update only counts
                self.state = self.engine.measure(
                    Signal.NONE, train, self.state, self.transform.update
                )[0]
        else:
            val = self._val_batch() if self.signal.needs_val else None
            self.state, stats = self.engine.step(
                train,
                self.state,
                signal=self.signal,
                update=self.transform.update if due else None,
                val=val,
            )
        if due:
            self._record()
        self._trained(stats)

    def _train_batch(self, reference: bool = False) -> Batch:
        if self.config.sampling == "sample":
            m = len(self.domains)
            alpha = self._reference_weights if reference else self._host_alpha()
            batch = self.sampler.mixture_batch(alpha, self.config.batch_per_domain * m)
        else:
            batch = self.sampler.train_batch(self.config.batch_per_domain)
        return self._checked(batch, len(self.domains))

    def _checked(self, batch: Batch, num_domains: int) -> Batch:
        # host-side numpy checks: a bad id never reaches the device, where it would be dropped
        # silently (JAX) or crash the process (CUDA), and no device value is read
        vocab = self.engine.vocab_size or self.sampler.vocab_size
        return check_batch(batch, num_domains=num_domains, vocab_size=vocab)

    def _val_batch(self) -> Batch:
        batch = self.sampler.val_batch(self.config.val_batch_size)
        return self._checked(batch, len(self.sampler.val_domains))

    def _weights(self) -> Array | None:
        return None if self.config.sampling == "sample" else self.state.alpha

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
            check_mixture(self.state, floor=getattr(self.config.params, "floor", 0.0))

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
        if self.episodic:
            row["episode"] = self.plan.schedule.episode_index(self.tick)
        if self.rounds > 1:
            row["round"] = self.round
        row.update(mixture_row(self.domains, self._acc, self.state, self._info))
        self._acc = None
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
        stop_every: int = 10,
    ) -> RunResult:
        """Run until ``config.steps`` proxy steps (in each round); returns the learned mixture.

        Args:
            progress: show a progress bar (step, episode, loss, top weights).
            checkpoint: called with this run every ``checkpoint_every`` proxy steps (and not at
                the end: the caller saves the final state itself).
            checkpoint_every: 0 disables periodic checkpoints.
            stop_every: in a run of several processes, ticks between the polls that agree on
                stopping (``should_stop`` on any process stops all at the same tick; one small
                collective per poll). One process polls every tick, with no collective.
        """
        bar = progress_bar(self.total_steps, self.proxy_step, progress)
        while not self.done and not self.stop_requested(stop_every):
            before = self.proxy_step
            self.step()
            due = checkpoint_every and self.proxy_step != before
            if checkpoint is not None and due and self.proxy_step % checkpoint_every == 0:
                checkpoint(self)
            if bar is not None and self.proxy_step != before:
                bar.update(self.proxy_step - before)
                if self.metrics and self.metrics[-1]["step"] == self.proxy_step:
                    bar.set_postfix_str(postfix(self.metrics[-1]))
        last = self.metrics[-1] if self.metrics else {}
        if self.done and (last.get("step") != self.proxy_step or "val_loss" not in last):
            self.log(evaluate=True)  # not when stopped early: a resumed run logs exactly once
        if bar is not None:
            bar.close()
        return self.result()

    def stop_requested(self, every: int = 10) -> bool:
        """Whether to stop before the next tick: ``should_stop`` here, or on any process.

        Processes poll at the same ticks (every ``every``-th call, counted from this run's
        start), and the engine's ``any_process`` tells each of them whether any process was
        asked to stop, so every process stops after the same tick and they save one checkpoint
        together. A signal that reaches only some nodes then stops the whole job cleanly.
        """
        local = self.should_stop is not None and self.should_stop()
        agree = getattr(self.engine, "any_process", None)
        if agree is None or getattr(self.engine, "processes", 1) <= 1:
            return local
        self._polls += 1
        if (self._polls - 1) % max(every, 1):
            return False
        return bool(agree(local))

    def result(self) -> RunResult:
        """The run's outputs on the host."""
        weighting = None if self.weighting is None else self.weighting.summary(self.domains)
        return run_result(self, weighting)

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
            "round": self.round,
            "round_mixtures": list(self.round_mixtures),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict`` (arrays may come back as numpy: the engine moves them)."""
        self.tick, self.proxy_step = int(state["tick"]), int(state["proxy_step"])
        self.reference_step = int(state["reference_step"])
        self.engine.load_state_dict(state["engine"])
        self.state = self.engine.to_device(state["mixture"])
        self.trajectory = [self.engine.to_device(a) for a in state["trajectory"]]
        self._acc = None if state["acc"] is None else self.engine.to_device(state["acc"])
        self._info = {k: self.engine.to_device(v) for k, v in state["info"].items()}
        self.sampler.load_state_dict(state["sampler"])
        self.metrics = list(state["metrics"])
        self._alpha_host = None
        self.round = int(state.get("round", 0))
        self.round_mixtures = [
            np.asarray(a, dtype=np.float64) for a in state.get("round_mixtures", [])
        ]
        if self.round_mixtures:  # the round's reference trains on the last round's output
            self._reference_to(self.round_mixtures[-1])
        if self.weighting is not None:
            if state.get("weighting") is None:
                raise ValueError("the checkpoint has no per-sample weighting state")
            self.weighting.load_state_dict(state["weighting"], self.engine.to_device)


def _initial_engine(engine: Engine, config: TrainConfig, plan: Any) -> dict:
    """A host copy of the engine's state at the run's start, where every round starts."""
    if not plan.reference:
        raise ConfigError(
            f"method={config.method!r}: rounds > 1 iterate a reference model's mixture; this "
            "plan trains none"
        )
    if config.weighting != "none":
        raise ConfigError("rounds > 1 and per-sample weighting (train.weighting) do not combine")
    if getattr(engine, "checkpoint_format", "npz") != "npz":
        raise ConfigError(
            "rounds > 1 restart the engine from a copy of its state_dict(), which sharded "
            "checkpoints leave without the models: set backend.checkpoint='npz'"
        )
    return _host_copy(engine.state_dict())


def _host_copy(tree: Any) -> Any:
    """A copy of a nest of dicts, lists and tuples whose arrays are host numpy copies."""
    if isinstance(tree, dict):
        return {k: _host_copy(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_host_copy(x) for x in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_host_copy(x) for x in tree)
    if tree is None or isinstance(tree, (bool, int, float, str, bytes, np.generic)):
        return tree
    return np.array(to_numpy(tree), copy=True)


def _check_signal(signal: Signal, cfg: TrainConfig) -> None:
    if signal is Signal.ALIGNMENT and (cfg.sampling != "reweight" or cfg.accumulate > 1):
        raise ConfigError(
            f"method={cfg.method!r} reads per-domain gradient alignment: it needs "
            "sampling='reweight' (per-domain sub-batches) and accumulate=1"
        )
