"""TANDEM inside a Hugging Face ``transformers.Trainer``: the Trainer's model is the proxy u.

``TandemTrainer`` keeps the Trainer's loop (optimizer and scheduler from ``TrainingArguments``,
logging, checkpoints, callbacks) and replaces what one training step does: every optimizer step
of the Trainer is one proxy step of a ``tandem_torch.Twins``. The method's ``Plan`` says what
runs around it, as in ``tandem_core.run.MixtureRun``: twin episodes (the SYNC and UPDATE ticks
between PROBE and FREE steps) or a measurement every N steps, after the reference phase an
``EveryStep`` plan may ask for; its ``Signal`` is measured by the torch engine's ``signals``
functions on the twins. Batches are drawn by domain from a sampler (``DatasetSampler`` over a
``datasets.Dataset`` with a domain column, or any ``tandem_core.BatchSampler``), not from the
Trainer's dataloader.

Importing this module imports ``transformers``; ``import tandem_torch`` does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

import tandem_core as tc
from tandem_core.data import Batch
from tandem_core.methods import (
    Episodes,
    EveryStep,
    Method,
    Plan,
    Signal,
    get_method,
    planned_updates,
)
from tandem_core.mixture import fixed
from tandem_core.run.reference import reference_weights

from . import checkpoint, signals
from .build import refuse_dropout_under_vmap
from .hf import is_hf_model, prepare_for_training
from .hf_data import DatasetSampler
from .twins import Twins

__all__ = ["DatasetSampler", "TandemTrainer"]

SAMPLING = ("reweight", "sample")
MIXTURE_FILE = "tandem_mixture.npz"  # tc.save_state of the mixture; tick, sampler
TWINS_FILE = "tandem_twins.npz"  # both twins, both optimizers, counters


class TandemTrainer(Trainer):
    """A ``transformers.Trainer`` whose steps learn the data mixture with a tandem method.

    Needs ``args.max_steps > 0`` (the Trainer's steps are proxy steps). Honours
    ``learning_rate``, ``optim``, the LR scheduler (the reference's LR follows the proxy's),
    ``max_grad_norm`` (each twin clipped), ``gradient_accumulation_steps`` (the global batch cut
    into that many micro-batches), ``bf16`` / ``fp16`` autocast, ``save_steps`` and
    ``resume_from_checkpoint`` (the twins, the mixture, the tick and the sampler are saved in
    each checkpoint folder as ``tandem_mixture.npz`` and ``tandem_twins.npz``), and
    torch.distributed (every rank draws the same global batch and keeps its rows). ``train``
    writes ``mixture.json`` into ``args.output_dir``.

    Args:
        *args: the ``Trainer``'s arguments (``model``, ``args``, ...).
        method: a ``tandem_core.methods.Method`` or its registered name (any entry of
            ``tandem_core.methods.all_methods()``): its plan, signal and transform.
        method_params: the method's params dataclass, or ``{key: value}`` for ``make_params``.
        transform: a custom mixture update (default: the method's), e.g. ``tc.tandem(...)``.
        schedule: twin episodes overriding an episodic method's plan, e.g.
            ``tc.Schedule(probe_steps=5, free_steps=20)``.
        domain_column: the domain column of ``train_dataset`` / ``val_dataset``.
        val_dataset: rows of the validation domains (the reference's objective).
        sampler: a ``tandem_core.BatchSampler`` instead of the datasets (e.g. a ``TokenSampler``).
        batch_per_domain: rows per domain of a global batch (default:
            ``per_device_train_batch_size``); a global batch has M times as many rows.
        val_batch_size: rows of the reference's validation batch.
        eval_per_domain: rows per domain of the batch an episode's signal is measured on.
        sampling: ``"reweight"`` (every domain in each batch, the loss weighted by alpha) or
            ``"sample"`` (rows drawn with probability alpha, re-read at each step).
        gamma: weight of the train loss in the reference's objective (default: the plan's).
        reference_lr: the reference's base learning rate (default: the proxy's).
        **kwargs: the ``Trainer``'s keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        method: str | Method = "tandem",
        method_params: Any = None,
        transform: tc.MixtureTransform | None = None,
        schedule: tc.Schedule | None = None,
        domain_column: str = "domain",
        val_dataset: Any = None,
        sampler: Any = None,
        batch_per_domain: int | None = None,
        val_batch_size: int = 32,
        eval_per_domain: int = 16,
        sampling: str = "reweight",
        gamma: float | None = None,
        reference_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if sampling not in SAMPLING:
            raise tc.ConfigError(f"sampling={sampling!r} is not one of {SAMPLING}")
        if self.args.max_steps <= 0:
            raise tc.ConfigError("TandemTrainer needs TrainingArguments(max_steps=...) > 0")
        if sampler is None:
            if self.train_dataset is None or val_dataset is None:
                raise tc.ConfigError("give train_dataset and val_dataset, or a sampler")
            sampler = DatasetSampler(
                self.train_dataset, val_dataset, domain_column=domain_column, seed=self.args.seed
            )
        self.method = get_method(method) if isinstance(method, str) else method
        params = _params(self.method, method_params)
        self.plan, self.signal = (
            _plan(self.method.plan(params), schedule, gamma),
            self.method.signal,
        )
        _check_signal(self.signal, sampling, self.args)
        if self.signal is Signal.ALIGNMENT:  # per-domain gradients vmap over the model
            if is_hf_model(self.model):
                prepare_for_training(self.model, vmapped=True)
            refuse_dropout_under_vmap(self.model)
        sizes = sampler.domain_sizes() if hasattr(sampler, "domain_sizes") else None
        updates = planned_updates(self.plan, self.args.max_steps)
        self.transform = transform or self.method.build(
            params,
            sizes=sizes,
            history=updates,
            num_domains=len(sampler.domains),
            updates=updates,
            lr=self.args.learning_rate,  # the base rate (a scheduler's lr_t is not followed)
        )
        self.reference_mixture = None  # (M,) host weights of the plan's reference phase
        if self.reference_budget:
            self.reference_mixture = reference_weights(
                self.plan.reference_mixture, sampler.domains, sizes
            )
        self.sampler, self.sampling, self.reference_lr = sampler, sampling, reference_lr
        self.batch_per_domain = batch_per_domain or self.args.per_device_train_batch_size
        self.val_batch_size, self.eval_per_domain = val_batch_size, eval_per_domain
        self.twins: Twins | None = None
        self.mixture: tc.MixtureState | None = None
        self.tick = 0  # schedule position (episodes) or main-phase proxy step (every-step plans)
        self.reference_step = 0  # steps of the plan's reference phase done
        self._resume: str | None = None

    @property
    def gamma(self) -> float:
        """The weight of the train loss in the reference's objective (episodic plans)."""
        return getattr(self.plan, "gamma", 1.0)

    @property
    def reference_budget(self) -> int:
        """Reference-phase steps before the first proxy step (0: no reference phase)."""
        if isinstance(self.plan, Episodes) or not self.plan.reference:
            return 0
        return self.plan.reference_steps or self.args.max_steps

    # ------------------------------------------------------------------ setup
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, then the twins over it (before accelerate patches forwards)."""
        optimizer = super().create_optimizer(model)
        if self.twins is None:
            clip = self.args.max_grad_norm if self.args.max_grad_norm > 0 else None
            self.twins = Twins(
                self.model,
                getattr(optimizer, "optimizer", optimizer),  # accelerate's wrapper: the real one
                num_domains=len(self.sampler.domains),
                num_val_domains=len(self.sampler.val_domains),
                reference_lr=self.reference_lr,
                grad_clip=clip,
                accumulate=self.args.gradient_accumulation_steps,
                device=self.args.device,
            )
            self.mixture, self.tick = self.twins.init_mixture(self.transform), 0
            if self._resume:
                self._load_tandem(self._resume)
        return optimizer

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Placeholders, one per micro-step: the rows come from the sampler, drawn by alpha.

        Not prepared by accelerate: every rank must see the same global batch (the twins keep
        their rows ``rank::world``).
        """
        n = self.args.max_steps * self.args.gradient_accumulation_steps
        return torch.utils.data.DataLoader(_Placeholders(n), batch_size=1)

    def floating_point_ops(self, inputs: dict) -> int:
        """Not estimated: the placeholders carry no tokens."""
        return 0

    # ------------------------------------------------------------------ training
    def training_step(self, model: Any, inputs: dict, num_items_in_batch: Any = None) -> Any:
        """One proxy step of the twins on the last micro-step of an optimizer step.

        Returns:
            The proxy's mean train loss (a detached scalar), 0 on the other micro-steps.
        """
        zero = torch.zeros((), device=self.args.device)
        if not self.accelerator.sync_gradients:  # the twins cut the global batch themselves
            return zero
        twins = self.twins
        self._follow_lr(twins)
        with self.accelerator.autocast():  # both twins: accelerate patched only u's forward
            stats = self._proxy_tick(twins)
        # the twins stepped: the Trainer's own optimizer step must find no gradient
        self.model.zero_grad(set_to_none=True)
        return (stats.sums.sum() / stats.counts.sum().clamp_min(1)).detach().to(zero)

    def _proxy_tick(self, twins: Twins) -> tc.DomainStats:
        """What the plan runs up to and including the next proxy step (MixtureRun's ticks)."""
        if isinstance(self.plan, Episodes):
            return self._episode_tick(twins)
        self._reference_phase(twins)
        return self._every_step_tick(twins)

    def _episode_tick(self, twins: Twins) -> tc.DomainStats:
        """SYNC / UPDATE ticks due before the next proxy step, then that step (PROBE or FREE)."""
        schedule = self.plan.schedule
        while (phase := schedule.phase(self.tick)) in (tc.Phase.SYNC, tc.Phase.UPDATE):
            if phase is tc.Phase.SYNC:
                twins.sync()
            else:
                batch = self._checked(self.sampler.eval_batch(self.eval_per_domain))
                stats = signals.measure(self.signal, twins, batch)[0]
                self.mixture = self.transform.update(self.mixture, stats)
            self.tick += 1
        train, weights = self._train_batch()
        if phase is tc.Phase.PROBE:
            stats = twins.probe(train, self._val_batch(), weights, gamma=self.gamma)
        else:
            stats = twins.step(train, weights)
        self.tick += 1
        return stats

    def _every_step_tick(self, twins: Twins) -> tc.DomainStats:
        """One proxy step; every ``update_every`` steps its batch's signal updates alpha first."""
        due = self.tick % self.plan.update_every == 0
        train, _ = self._train_batch()  # drawn before the update, as MixtureRun does
        val = self._val_batch() if self.signal.needs_val else None
        update = self.transform.update if due else None
        reweight = self.sampling == "reweight"
        self.mixture, stats = measured_step(
            twins, self.signal, train, self.mixture, update, val=val, reweight=reweight
        )
        self.tick += 1
        return stats

    def _reference_phase(self, twins: Twins) -> None:
        """The reference w trains its whole budget on the plan's mixture, then stays frozen.

        Runs inside the Trainer's first step (the Trainer's steps count proxy steps only), from
        the proxy's initialisation, at the reference's base learning rate (not the scheduler's
        first value: a warmup would leave it at 0).
        """
        budget = self.reference_budget
        if self.reference_step >= budget:
            return
        if self.reference_step == 0:
            twins.sync()
        for gu, gw in zip(twins.opt_proxy.param_groups, twins.opt_reference.param_groups):
            gw["lr"] = self.reference_lr or gu.get("initial_lr", gu["lr"])
        mixture = twins.init_mixture(fixed(self.reference_mixture)).alpha
        weights = mixture if self.sampling == "reweight" else None
        while self.reference_step < budget:
            twins.step(self._reference_batch(), weights, model="reference")
            self.reference_step += 1

    def _reference_batch(self) -> Batch:
        """A global batch of the reference phase's mixture, as MixtureRun draws it."""
        if self.sampling == "reweight":
            return self._checked(self.sampler.train_batch(self.batch_per_domain))
        m = len(self.sampler.domains)
        batch = self.sampler.mixture_batch(self.reference_mixture, self.batch_per_domain * m)
        return self._checked(batch)

    def _train_batch(self) -> tuple[Batch, torch.Tensor | None]:
        """The global batch and the objective's weights (``None``: sampled by alpha)."""
        if self.sampling == "reweight":
            batch = self.sampler.train_batch(self.batch_per_domain)
            return self._checked(batch), self.mixture.alpha
        alpha = self.mixture.alpha.detach().double().cpu().numpy()  # one read per step
        size = self.batch_per_domain * len(self.sampler.domains)
        return self._checked(self.sampler.mixture_batch(alpha / alpha.sum(), size)), None

    def _val_batch(self) -> Batch:
        batch = self.sampler.val_batch(self.val_batch_size)
        return tc.check_batch(batch, num_domains=len(self.sampler.val_domains))

    def _checked(self, batch: Batch) -> Batch:
        # on the host: a bad domain id never reaches the device, where it would be dropped
        return tc.check_batch(batch, num_domains=len(self.sampler.domains))

    def _follow_lr(self, twins: Twins) -> None:
        """The reference's learning rates follow the Trainer's scheduler, in ratio."""
        for gu, gw in zip(twins.opt_proxy.param_groups, twins.opt_reference.param_groups):
            base_u = gu.get("initial_lr", gu["lr"])
            base_w = self.reference_lr or base_u
            gw["lr"] = gu["lr"] * base_w / base_u if base_u else gu["lr"]

    # ------------------------------------------------------------------ results
    def mixture_summary(self) -> tc.MixtureSummary:
        """``tc.mixture_summary`` of the learned mixture: average (the answer), last, trajectory."""
        return tc.mixture_summary(self.mixture)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs plus the current mixture, ``mixture/<domain>``."""
        if self.mixture is not None:
            alpha = self.mixture.alpha.detach().cpu().tolist()
            logs = {**logs, **{f"mixture/{d}": a for d, a in zip(self.sampler.domains, alpha)}}
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``, restoring the twins on resume; writes ``mixture.json`` at the end."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        self._resume = resume_from_checkpoint or None
        if self._resume and self.twins is not None:  # a second train() call: twins exist
            self._load_tandem(self._resume)
        out = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if self.args.should_save:
            write_mixture(Path(self.args.output_dir) / "mixture.json", self)
        return out

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's checkpoint, plus the mixture (tick, sampler) and the twins."""
        super()._save_checkpoint(model, trial)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        folder = Path(self._get_output_dir(trial=trial)) / folder
        if self.args.should_save:
            meta = {"tick": self.tick, "reference_step": self.reference_step}
            meta["sampler"] = self.sampler.state_dict()
            tc.save_state(folder / MIXTURE_FILE, self.mixture, metadata=meta)
            tc.save_state(folder / TWINS_FILE, checkpoint.state_dict(self.twins))

    def _load_tandem(self, folder: str) -> None:
        """Restore the twins, the mixture, the tick and the sampler from a checkpoint folder."""
        folder = Path(folder)
        checkpoint.load_state_dict(self.twins, tc.load_state(folder / TWINS_FILE))
        path = folder / MIXTURE_FILE
        self.mixture = tc.load_state(path, like=self.mixture, xp=torch, device=self.twins.device)
        meta = tc.read_metadata(path)
        self.tick = int(meta["tick"])
        self.reference_step = int(meta.get("reference_step", 0))
        self.sampler.load_state_dict(meta["sampler"])


def write_mixture(path: Path, trainer: TandemTrainer) -> Path:
    """``mixture.json`` in the layout of tandem's run directory (average, last, trajectory)."""
    summary = trainer.mixture_summary()
    domains = list(trainer.sampler.domains)
    doc = {
        "format": "tandem-mixture",
        "version": 1,
        "method": trainer.method.name,
        "backend": "torch",
        "domains": domains,
        "average": dict(zip(domains, map(float, summary.average.tolist()))),
        "last": dict(zip(domains, map(float, summary.last.tolist()))),
        "trajectory": np.asarray(summary.trajectory.tolist(), dtype=float).round(8).tolist(),
        "steps": int(trainer.state.global_step),
        "val_domains": list(trainer.sampler.val_domains),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def measured_step(
    twins: Twins,
    signal: Signal,
    train: Batch,
    state: tc.MixtureState,
    update: Any,
    *,
    val: Batch | None = None,
    reweight: bool = True,
) -> tuple[tc.MixtureState, tc.DomainStats]:
    """One proxy step; with ``update``, ``signal`` on the step's batch updates the mixture first.

    The step of ``TorchEngine.step`` (never a stale mixture), on the twins: the measurement is
    ``signals``'; under the alignment signal the per-domain gradients ``(M, ...)`` that measure
    it also make the step, ``sum_m alpha_m g_m``.

    Returns:
        The new mixture state and the step's per-domain train ``DomainStats`` ``(M,)``.
    """
    if signal is Signal.ALIGNMENT:
        return signals.aligned_step(twins, train, val, state, update)
    split = twins.split(train)
    if update is not None:
        state = update(state, signals.measure(signal, twins, split)[0])
    return state, twins.step(split, state.alpha if reweight else None)


def _params(method: Method, values: Any) -> Any:
    """The method's params: a dataclass instance as given, else ``make_params(values or {})``."""
    if isinstance(values, method.params):
        return values
    return method.make_params(values or {})


def _plan(plan: Plan, schedule: tc.Schedule | None, gamma: float | None) -> Plan:
    """The method's plan, with the episodes and gamma given to the Trainer in place of its own."""
    if isinstance(plan, EveryStep):
        if schedule is not None:
            raise tc.ConfigError("schedule= sets twin episodes; this method steps every step")
        if plan.rounds > 1:
            raise tc.ConfigError(
                f"rounds={plan.rounds}: TandemTrainer runs one round; iterate with "
                "tandem_core.run.MixtureRun (tandem optimize), or give each round's output "
                "as the next trainer's reference_mixture"
            )
        return plan
    return Episodes(schedule or plan.schedule, plan.gamma if gamma is None else gamma)


def _check_signal(signal: Signal, sampling: str, args: Any) -> None:
    # per-domain sub-batches, whole, on one process: what the vmapped gradients read
    if signal is Signal.ALIGNMENT and (
        sampling != "reweight" or args.gradient_accumulation_steps > 1 or args.world_size > 1
    ):
        raise tc.ConfigError(
            "the per-domain gradient alignment signal needs sampling='reweight', "
            "gradient_accumulation_steps=1 and one process"
        )


class _Placeholders(torch.utils.data.Dataset):
    """``n`` items ``{"tick": i}``: the Trainer counts micro-steps over them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"tick": i}
