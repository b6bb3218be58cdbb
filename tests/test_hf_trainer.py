"""``tandem_torch.TandemTrainer``: TANDEM inside ``transformers.Trainer.train()``.

The Trainer must learn the mixture of the README's Twins loop (``examples/torch_loop.py``) on the
same model, batches and optimizer, and resume from its own checkpoints exactly.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import tandem_core as tc  # noqa: E402
from tandem_adapters.data import TokenSampler, make_suite  # noqa: E402
from tandem_torch import Twins  # noqa: E402
from tandem_torch.hf_trainer import TandemTrainer  # noqa: E402

SEQ_LEN = 32
STEPS = 50  # two episodes of 5 probe + 20 free steps


def _model():
    config = transformers.GPT2Config(
        vocab_size=32,
        n_positions=SEQ_LEN,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _transform():
    return tc.tandem(eta_alpha=0.3, step="eg", normalize="rms", smoothing=1e-3)


SCHEDULE = tc.Schedule(probe_steps=5, free_steps=20)


def _reference_loop(steps, accumulate=1):
    """The README's Twins loop (examples/torch_loop.py): average and last mixture ``(2, M)``."""
    model = _model()
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    twins = Twins(
        model,
        optimizer,
        num_domains=len(sampler.domains),
        num_val_domains=len(sampler.val_domains),
        accumulate=accumulate,
    )
    transform = _transform()
    state = twins.init_mixture(transform)
    tick = done = 0
    while done < steps:
        match SCHEDULE.phase(tick):
            case tc.Phase.SYNC:
                twins.sync()
            case tc.Phase.PROBE:
                twins.probe(sampler.train_batch(16), sampler.val_batch(32), state.alpha)
                done += 1
            case tc.Phase.UPDATE:
                state = transform.update(state, twins.stats(sampler.eval_batch(16)))
            case tc.Phase.FREE:
                twins.step(sampler.train_batch(16), state.alpha)
                done += 1
        tick += 1
    return _mixtures(tc.mixture_summary(state))


def _args(out, steps, **kw):
    defaults = dict(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=3e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        per_device_train_batch_size=16,
        save_strategy="no",
        report_to=[],
        logging_steps=25,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    return transformers.TrainingArguments(**{**defaults, **kw})


def _trainer(out, steps, **kw):
    return TandemTrainer(
        model=_model(),
        args=_args(out, steps, **kw),
        sampler=TokenSampler(make_suite("planted"), SEQ_LEN, seed=0),
        transform=_transform(),
        schedule=SCHEDULE,
        val_batch_size=32,
        eval_per_domain=16,
    )


def _mixtures(summary):
    """``(2, M)``: the average mixture and the last one."""
    return np.stack([summary.average.numpy(), summary.last.numpy()])


def _trajectory(trainer):
    return _mixtures(trainer.mixture_summary())


def test_trainer_learns_the_mixture_of_the_twins_loop(tmp_path):
    trainer = _trainer(tmp_path, STEPS)
    trainer.train()
    got, want = _trajectory(trainer), _reference_loop(STEPS)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, 1 / got.shape[1])  # the mixture moved
    doc = json.loads((tmp_path / "mixture.json").read_text())
    np.testing.assert_allclose(
        [doc["average"][d] for d in doc["domains"]], trainer.mixture_summary().average, atol=1e-7
    )


def test_gradient_accumulation_matches_twins_accumulate(tmp_path):
    trainer = _trainer(tmp_path, STEPS, gradient_accumulation_steps=2)
    trainer.train()
    np.testing.assert_allclose(_trajectory(trainer), _reference_loop(STEPS, 2), atol=1e-5)


def test_resume_from_a_trainer_checkpoint_continues_the_mixture(tmp_path):
    whole = _trainer(tmp_path / "a", STEPS, save_strategy="steps", save_steps=30)
    whole.train()  # checkpoint-30 is mid-episode (episode 2, free steps)
    resumed = _trainer(tmp_path / "b", STEPS)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-30"))
    np.testing.assert_array_equal(_trajectory(resumed), _trajectory(whole))
    assert resumed.tick == whole.tick


def _planted_datasets():
    """The planted suite as ``datasets.Dataset``s: HF rows (labels = input_ids) + domain."""
    datasets = pytest.importorskip("datasets")
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=1)

    def rows(batch, names):
        ids = np.concatenate([batch["tokens"], batch["labels"][:, -1:]], axis=1).tolist()
        return {"input_ids": ids, "labels": ids, "domain": [names[d] for d in batch["domain"]]}

    train = rows(sampler.train_batch(256), sampler.domains)
    val = [rows(b, sampler.val_domains) for b in sampler.validation_sets(64)]
    val = {k: sum((v[k] for v in val), []) for k in train}
    return datasets.Dataset.from_dict(train), datasets.Dataset.from_dict(val), sampler.domains


def test_trainer_on_a_dataset_down_weights_noise(tmp_path):
    train, val, domains = _planted_datasets()
    trainer = TandemTrainer(
        model=_model(),
        args=_args(tmp_path, 150),
        train_dataset=train,
        val_dataset=val,
        domain_column="domain",
        transform=_transform(),
        schedule=SCHEDULE,
    )
    trainer.train()
    average = trainer.mixture_summary().average.numpy()
    names = list(trainer.sampler.domains)
    assert sorted(names) == sorted(domains)
    assert average[names.index("noise")] < 1 / len(names)


# ---------------------------------------------------------------- every-step methods (MixtureRun)
EVERY_STEP = {
    "doremi": {"reference_steps": 6},  # a reference phase of 6 steps, then excess losses
    "doge": {},  # per-domain gradient alignment (torch.func), no reference phase
}


def _run_config(method, steps):
    from tandem_core.run import TrainConfig

    return TrainConfig.from_mapping(
        {
            "method": method,
            "steps": steps,
            "lr": 3e-3,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "batch_per_domain": 16,
            "val_batch_size": 32,
            "eval_per_domain": 16,
            "log_every": steps,
            "dtype": "float32",
            **EVERY_STEP[method],
        }
    )


def _mixture_run(method, steps):
    """``MixtureRun`` on the torch engine: the trajectory ``(T, M)`` and the last alpha ``(M,)``."""
    from tandem_core.run import MixtureRun

    backend = tc.backend.training_backend("torch")
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=0)
    cfg = _run_config(method, steps)
    engine = backend.make_engine(
        _model(),
        cfg,
        num_domains=len(sampler.domains),
        num_val_domains=len(sampler.val_domains),
        options=backend.Options(device="cpu"),
    )
    run = MixtureRun(engine, sampler, cfg)
    result = run.run(progress=False)
    return np.asarray(result.trajectory), run.state.alpha.numpy()


@pytest.mark.parametrize("method", sorted(EVERY_STEP))
def test_every_step_methods_equal_mixture_run(tmp_path, method):
    steps = 8
    trainer = TandemTrainer(
        model=_model(),
        args=_args(tmp_path, steps),
        sampler=TokenSampler(make_suite("planted"), SEQ_LEN, seed=0),
        method=method,
        method_params=EVERY_STEP[method],
        val_batch_size=32,
    )
    trainer.train()
    want_trajectory, want_last = _mixture_run(method, steps)
    summary = trainer.mixture_summary()
    assert want_trajectory.shape == (steps, len(trainer.sampler.domains))  # one update per step
    np.testing.assert_allclose(summary.trajectory.numpy(), want_trajectory, atol=1e-5)
    np.testing.assert_allclose(summary.last.numpy(), want_last, atol=1e-5)
    assert not np.allclose(want_last, 1 / want_last.size)  # the mixture moved
    assert trainer.reference_step == EVERY_STEP[method].get("reference_steps", 0)
    assert json.loads((tmp_path / "mixture.json").read_text())["method"] == method


def test_a_method_record_and_its_params_dataclass(tmp_path):
    record = tc.methods.get_method("doremi")
    params = record.make_params({"reference_steps": 2, "update_every": 2})
    trainer = TandemTrainer(
        model=_model(),
        args=_args(tmp_path, 4),
        sampler=TokenSampler(make_suite("planted"), SEQ_LEN, seed=0),
        method=record,
        method_params=params,
    )
    trainer.train()
    assert trainer.reference_step == 2 and trainer.tick == 4
    assert trainer.mixture_summary().trajectory.shape[0] == 2  # steps 0 and 2


def test_reference_phase_mixture_and_one_round(tmp_path):
    # docs/methods.md, "DoReMi": the reference trains on the natural mixture by default
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=0)
    trainer = TandemTrainer(
        model=_model(), args=_args(tmp_path, 4), sampler=sampler, method="doremi"
    )
    sizes = np.asarray(sampler.domain_sizes(), dtype=float)
    np.testing.assert_allclose(trainer.reference_mixture, sizes / sizes.sum())
    with pytest.raises(tc.ConfigError, match="runs one round"):
        TandemTrainer(
            model=_model(),
            args=_args(tmp_path, 4),
            sampler=sampler,
            method="doremi",
            method_params={"rounds": 2},
        )


def test_alignment_refuses_what_it_cannot_measure(tmp_path):
    sampler = TokenSampler(make_suite("planted"), SEQ_LEN, seed=0)
    with pytest.raises(tc.ConfigError, match="alignment"):
        TandemTrainer(
            model=_model(),
            args=_args(tmp_path, 4, gradient_accumulation_steps=2),
            sampler=sampler,
            method="doge",
        )
    with pytest.raises(tc.ConfigError, match="schedule"):
        TandemTrainer(
            model=_model(),
            args=_args(tmp_path, 4),
            sampler=sampler,
            method="doremi",
            schedule=SCHEDULE,
        )


# ---------------------------------------------------------------- torch.distributed (gloo)
DDP_STEPS = 30  # one update after 5 probe steps, the next after the first episode's 25


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, out):
    """One rank of a gloo run: the Trainer sets the process group up from the environment."""
    import os
    import sys

    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    trainer = _trainer(f"{out}/run", DDP_STEPS, ddp_backend="gloo")
    assert trainer.args.world_size == world and trainer.twins is None
    trainer.train()
    assert trainer.twins.world == world  # each rank kept its rows of the global batch
    np.save(f"{out}/rank{rank}.npy", _trajectory(trainer))
    dist.barrier()
    dist.destroy_process_group()
    # as tests/test_distributed.py: skip interpreter teardown, where a gloo rank under CPU
    # contention sometimes aborts after destroy_process_group (pytorch/pytorch#179291)
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_learn_the_mixture_of_one_process(tmp_path):
    torch_mp = pytest.importorskip("torch.multiprocessing")
    torch_mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npy") for r in range(2)]
    np.testing.assert_array_equal(ranks[0], ranks[1])  # every rank: the same alpha
    single = _trainer(tmp_path / "single", DDP_STEPS)
    single.train()
    np.testing.assert_allclose(ranks[0], _trajectory(single), atol=1e-5)
    assert not np.allclose(ranks[0], 1 / ranks[0].shape[1])


def test_bf16_mixed_precision_runs_both_twins_under_autocast(tmp_path, monkeypatch):
    seen = []
    original = torch.nn.Linear.forward

    def recording(self, x):  # the dtype the matmuls run in, under the Trainer's autocast
        out = original(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    trainer = _trainer(tmp_path, 30, bf16=True)
    trainer.train()
    assert torch.bfloat16 in seen  # the twins' forwards ran in bfloat16
    full = _trainer(tmp_path / "fp32", 30)
    full.train()
    low, high = _trajectory(trainer), _trajectory(full)
    assert np.isfinite(low).all() and abs(low.sum(axis=1) - 1).max() < 1e-5
    assert np.abs(low - high).max() < 0.05  # bf16 rounding moves the mixture a little
