"""tandem_torch.Twins, the public twin helper: a user loop equals MixtureRun over TorchEngine,
sync copies parameters and moments, Delta is zero after sync, no host syncs, exact skips."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tandem_core as tc  # noqa: E402
from tandem_adapters.data import TokenSampler, make_suite  # noqa: E402
from tandem_core.methods import get_method  # noqa: E402
from tandem_core.run import GPTConfig, MixtureRun, TrainConfig, init_gpt_params  # noqa: E402
from tandem_torch import TinyGPT, TorchEngine, TorchOptions, Twins  # noqa: E402

GPT = GPTConfig(vocab_size=16, seq_len=16, d_model=16, n_layer=1, n_head=2)
BATCH, VAL, EVAL = 4, 8, 4  # rows per domain, validation rows, eval rows per domain
K, E = 2, 3  # probe and free steps per episode


def _sampler() -> TokenSampler:
    return TokenSampler(make_suite("planted", vocab_size=16, tokens_per_domain=2000), 16, seed=0)


def _model() -> TinyGPT:
    return TinyGPT(GPT, init_gpt_params(GPT, 0))


def _twins(model: torch.nn.Module | None = None, m: int = 5, **kw) -> Twins:
    model = model or _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    return Twins(model, opt, num_domains=m, num_val_domains=1, device="cpu", **kw)


def _user_loop(steps: int) -> tc.MixtureState:
    """The loop of the docs: proxy steps counted as MixtureRun counts them (PROBE and FREE)."""
    sampler = _sampler()
    twins = _twins(m=len(sampler.domains))
    # the defaults `MixtureRun` builds for a run of `steps`
    keys = {"probe_steps": K, "free_steps": E}
    transform = get_method("tandem").make_transform(
        keys, num_domains=len(sampler.domains), steps=steps
    )
    state = twins.init_mixture(transform)
    schedule = tc.Schedule(K, E)
    tick = done = 0
    while done < steps:
        match schedule.phase(tick):
            case tc.Phase.SYNC:
                twins.sync()
            case tc.Phase.PROBE:
                twins.probe(sampler.train_batch(BATCH), sampler.val_batch(VAL), state.alpha)
                done += 1
            case tc.Phase.UPDATE:
                state = transform.update(state, twins.stats(sampler.eval_batch(EVAL)))
            case tc.Phase.FREE:
                twins.step(sampler.train_batch(BATCH), state.alpha)
                done += 1
        tick += 1
    return state


def test_user_loop_equals_mixture_run():
    steps = 3 * (K + E) + 1
    cfg = TrainConfig.from_mapping(
        {
            "steps": steps,
            "probe_steps": K,
            "free_steps": E,
            "batch_per_domain": BATCH,
            "val_batch_size": VAL,
            "eval_per_domain": EVAL,
        }
    )
    sampler = _sampler()
    engine = TorchEngine(
        _model(), cfg, len(sampler.domains), num_val_domains=1, options=TorchOptions(device="cpu")
    )
    result = MixtureRun(engine, sampler, cfg).run(progress=False)
    state = _user_loop(steps)
    summary = tc.mixture_summary(state)
    assert len(result.trajectory) == 3
    np.testing.assert_array_equal(summary.last.numpy(), result.last)
    np.testing.assert_array_equal(summary.average.numpy(), result.average)
    assert np.abs(result.last - 1 / len(sampler.domains)).max() > 0  # the mixture moved


def _moments(opt: torch.optim.Optimizer, model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for p in model.parameters() for t in opt.state[p].values()]


def test_sync_copies_parameters_and_moments_without_sharing():
    sampler = _sampler()
    twins = _twins()
    twins.sync()
    for _ in range(2):  # the twins drift apart: different objectives
        twins.probe(sampler.train_batch(BATCH), sampler.val_batch(VAL), None)
    twins.step(sampler.train_batch(BATCH))
    assert twins.distance() > 0
    twins.sync()
    assert twins.distance() == 0
    pairs = [
        *zip(twins.proxy.parameters(), twins.reference.parameters()),
        *zip(
            _moments(twins.opt_proxy, twins.proxy),
            _moments(twins.opt_reference, twins.reference),
        ),
    ]
    assert len(pairs) > 2 * len(list(twins.proxy.parameters()))  # step, exp_avg, exp_avg_sq
    for u, w in pairs:
        torch.testing.assert_close(w, u, rtol=0, atol=0)
        assert w.untyped_storage().data_ptr() != u.untyped_storage().data_ptr()
    before = [p.detach().clone() for p in twins.proxy.parameters()]
    twins.step(sampler.train_batch(BATCH), model="reference")  # moves w only
    assert all(torch.equal(a, p) for a, p in zip(before, twins.proxy.parameters()))
    assert twins.distance() > 0


def test_stats_delta_is_zero_right_after_sync():
    sampler = _sampler()
    twins = _twins()
    twins.step(sampler.train_batch(BATCH))
    twins.sync()
    stats = twins.stats(sampler.eval_batch(EVAL))
    assert isinstance(stats, tc.TwinStats)
    delta, present = tc.twin_delta(stats)
    assert bool(present.all())
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=0)
    assert stats.proxy.counts.tolist() == [EVAL] * len(sampler.domains)


def _no_host_sync():
    """Every Tensor read on the host, called from tandem code, raises."""
    from backend_kits import TorchKit

    return TorchKit().no_host_sync()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_no_host_sync_in_probe_step_and_stats(accumulate):
    sampler = _sampler()
    twins = _twins(accumulate=accumulate)
    transform = tc.tandem(eta_alpha=0.3, step="eg", normalize="rms", smoothing=1e-3)
    state = twins.init_mixture(transform)
    batches = [sampler.train_batch(BATCH) for _ in range(3)]
    val, ev = sampler.val_batch(VAL), sampler.eval_batch(EVAL)
    with _no_host_sync():
        twins.sync()
        twins.probe(batches[0], val, state.alpha)
        state = transform.update(state, twins.stats(ev))
        twins.step(batches[1], state.alpha)
        twins.step({k: torch.as_tensor(v) for k, v in batches[2].items()}, state.alpha)
        twins.distance()
        twins.counters()
    assert int(twins.counters()["nonfinite"]) == 0


class _Poisoned(torch.nn.Module):
    """A model whose logits are NaN while ``poison`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _model()
        self.register_buffer("poison", torch.zeros(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.inner(tokens) + self.poison


def test_nan_loss_skips_the_step_exactly():
    sampler = _sampler()
    batches = [sampler.train_batch(BATCH) for _ in range(3)]
    skipped, clean = _twins(_Poisoned()), _twins(_Poisoned())
    skipped.step(batches[0])
    skipped.proxy.poison.fill_(float("nan"))
    skipped.step(batches[1])  # non-finite gradient: parameters and moments kept
    skipped.proxy.poison.fill_(0.0)
    skipped.step(batches[2])
    clean.step(batches[0])
    clean.step(batches[2])
    for a, b in zip(skipped.proxy.parameters(), clean.proxy.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(
        _moments(skipped.opt_proxy, skipped.proxy), _moments(clean.opt_proxy, clean.proxy)
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    counters = skipped.counters()
    assert int(counters["nonfinite"]) == 1 and int(counters["first_nonfinite"]) == 1
    assert int(clean.counters()["nonfinite"]) == 0


def test_launch_reruns_the_command_under_torchrun(monkeypatch):
    import subprocess

    from tandem_torch import TorchBackend

    seen = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: seen.append(cmd) or _Done())
    backend, argv = TorchBackend(), ["optimize", "--nproc", "2", "-q", "--nproc=2"]
    assert backend.launch(argv, TorchOptions(nproc=1), run_dir="runs/x") is None
    assert backend.launch(argv, TorchOptions(nproc=2), run_dir="runs/x") == 0
    cmd = seen[0]
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("tandem_adapters.cli") + 1 :] == [
        "optimize",
        "-q",
        "--set",
        'run.run_dir="runs/x"',
        "--set",
        "backend.nproc=2",
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker runs the job itself
    assert backend.launch(argv, TorchOptions(nproc=2), run_dir="runs/x") is None


class _Done:
    """A torchrun that exits 0 at once with nothing on stderr."""

    returncode = 0
    stderr = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def wait(self):
        return 0
