"""The same tests for both backends' engines (torch and JAX), via tests/backend_kits.py."""

import numpy as np
import pytest
from backend_kits import SMALL, toy_config
from toy_data import PoisonRows, toy_sampler

import tandem_core as tc
from tandem_core.methods import Signal
from tandem_core.run import GPTConfig, MixtureRun
from tandem_core.run.gpt import gpt_forward_numpy, init_gpt_params, token_losses


def _cfg(**kw):
    return toy_config(**kw)


def _run(kit, cfg, sampler=None, gpt=SMALL, model_kw=None, **engine_kw):
    sampler = sampler or toy_sampler(seq_len=16)
    model = kit.model(gpt, init_gpt_params(gpt, 0), cfg.dtype, **(model_kw or {}))
    engine = kit.engine(model, cfg, len(sampler.domains), len(sampler.val_domains), **engine_kw)
    return MixtureRun(engine, sampler, cfg), engine


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_forward_and_loss_match_numpy_reference(kit, dtype, tol):
    params = init_gpt_params(SMALL, 3)
    tokens = np.random.default_rng(0).integers(0, 16, size=(3, 12))
    logits, hidden = kit.forward(kit.model(SMALL, params, dtype), tokens)
    ref_logits, ref_hidden = gpt_forward_numpy(params, tokens, SMALL)
    np.testing.assert_allclose(logits, ref_logits, rtol=tol, atol=tol)
    np.testing.assert_allclose(hidden, ref_hidden, rtol=tol, atol=tol)
    labels = np.roll(tokens, -1, axis=1)
    labels[0, 5:] = tc.IGNORE_INDEX
    labels[2, :] = tc.IGNORE_INDEX  # a fully padded row: loss 0, not scored
    loss, n = kit.losses(kit.model(SMALL, params, dtype), {"tokens": tokens, "labels": labels})
    ref_loss, ref_n = token_losses(ref_logits, labels)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    assert n.tolist() == ref_n.tolist() == [5, 12, 0]


def test_sync_copies_params_and_optimizer_state_without_sharing(kit):
    run, engine = _run(kit, _cfg(method="uniform"))
    for _ in range(3):
        run.step()  # the proxy's AdamW moments are now non-zero
    engine.sync()
    assert kit.distance(engine) == 0.0
    for a, b in zip(kit.opt_moments(engine, "proxy"), kit.opt_moments(engine, "reference")):
        np.testing.assert_array_equal(a, b)
    before_params, before_moments = kit.flat(engine), kit.opt_moments(engine, "proxy")
    engine.step(run.sampler.train_batch(4), run.state, model="reference")
    assert kit.distance(engine) > 0
    np.testing.assert_array_equal(kit.flat(engine), before_params)
    for a, b in zip(kit.opt_moments(engine, "proxy"), before_moments):
        np.testing.assert_array_equal(a, b)  # stepping w never moves u's optimizer state


def test_probe_step_twins_differ_by_the_validation_gradient(kit):
    # SGD, gamma = 1, same lr, same train batch: w_1 - u_1 = -lr * grad L_val(u_0) exactly
    cfg = _cfg(optimizer="sgd", lr=0.05, grad_clip=None, dtype="float64", probe_steps=1)
    run, engine = _run(kit, cfg)
    sampler = run.sampler
    engine.sync()
    train, val = sampler.train_batch(4), sampler.val_batch(6)
    _, g_val = kit.grads(engine, train, val, 3, 1)
    engine.probe(train, val, run.state.alpha, gamma=1.0)
    np.testing.assert_allclose(
        kit.flat(engine, "reference") - kit.flat(engine), -0.05 * g_val, atol=1e-12
    )


@pytest.mark.parametrize("eta", [1e-2, 1e-3])
def test_delta_relates_to_gradient_alignment(kit, eta):
    # K = 1, SGD, gamma = 1: Delta_m = -eta <grad L^m_train, grad L_val> + O(eta^2)
    # (docs/methods.md, TANDEM: the relation to DoGE)
    cfg = _cfg(
        optimizer="sgd", lr=eta, grad_clip=None, dtype="float64", probe_steps=1, eval_per_domain=4
    )
    run, engine = _run(kit, cfg)
    sampler = run.sampler
    train, val, ev = sampler.train_batch(4), sampler.val_batch(6), sampler.eval_batch(4)
    g_dom, _ = kit.grads(engine, ev, val, 3, 1)  # per-domain gradients on the evaluation batch
    _, g_val = kit.grads(engine, train, val, 3, 1)
    engine.sync()
    engine.probe(train, val, run.state.alpha, gamma=1.0)
    _, info = engine.measure(Signal.TWIN, ev, run.state, run.transform.update)
    delta = np.asarray(info["delta"])
    predicted = -eta * g_dom @ g_val
    rel = np.abs(delta - predicted).max() / np.abs(predicted).max()
    assert rel < 30 * eta  # first order: the error shrinks linearly with eta


def test_large_gamma_twins_track_and_delta_shrinks(kit):
    def delta_at(gamma):
        cfg = _cfg(
            optimizer="sgd",
            lr=0.05,
            lr_reference=0.05 / gamma,
            gamma=gamma,
            grad_clip=None,
            dtype="float64",
            probe_steps=2,
        )
        run, engine = _run(kit, cfg)
        s = run.sampler
        engine.sync()
        for _ in range(2):
            engine.probe(s.train_batch(4), s.val_batch(6), run.state.alpha, gamma=gamma)
        _, info = engine.measure(Signal.TWIN, s.eval_batch(4), run.state, run.transform.update)
        return np.abs(np.asarray(info["delta"])).max(), float(info["twin_distance"])

    (d10, dist10), (d100, dist100) = delta_at(10.0), delta_at(100.0)
    assert 5 < d10 / d100 < 20 and 5 < dist10 / dist100 < 20  # roughly 1/gamma


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_tandem_moves_alpha_off_the_noise_domain(kit, optimizer):
    lr = 3e-3 if optimizer == "adamw" else 0.3
    cfg = _cfg(
        steps=200,
        probe_steps=5,
        free_steps=20,
        batch_per_domain=8,
        val_batch_size=16,
        eval_per_domain=16,
        log_every=50,
        optimizer=optimizer,
        lr=lr,
    )
    result = _run(kit, cfg)[0].run(progress=False)
    noise, target = result.domains.index("noise"), result.domains.index("target")
    assert result.average[noise] < 1 / 3 < result.average[target]
    assert result.last[noise] < 0.1
    assert result.trajectory.shape == (8, 3)
    assert np.all(result.trajectory >= 0) and np.allclose(result.trajectory.sum(1), 1)


@pytest.mark.parametrize("method", ["doremi", "doge", "uniform", "natural", "temperature"])
def test_baselines_run_through_the_same_loop(kit, method):
    result = _run(kit, _cfg(method=method, steps=12, update_every=2))[0].run(progress=False)
    assert result.steps == 12 and np.isfinite(result.average).all()
    assert abs(result.average.sum() - 1) < 1e-5 and result.val_losses.shape == (1,)
    assert len(result.trajectory) == 6
    if method in ("uniform", "natural"):  # toy domains have equal sizes
        np.testing.assert_allclose(result.average, 1 / 3, rtol=1e-6)


def test_sampling_in_proportion_to_alpha(kit):
    result = _run(kit, _cfg(sampling="sample", steps=15))[0].run(progress=False)
    assert result.steps == 15 and np.isfinite(result.last).all()
    with pytest.raises(tc.ConfigError, match="alignment: it needs sampling='reweight'"):
        _run(kit, _cfg(method="doge", sampling="sample"))


def test_fused_twins_equal_sequential(kit):
    results = [
        _run(kit, _cfg(dtype="float64"), options={"fuse_twins": fuse})[0].run(progress=False)
        for fuse in (False, True)
    ]
    np.testing.assert_allclose(results[0].trajectory, results[1].trajectory, rtol=1e-9)


@pytest.mark.parametrize("policy", ["skip", "zero"])
def test_nan_loss_skips_the_step_and_alpha_stays_finite(kit, policy):
    sampler = PoisonRows(toy_sampler(seq_len=16), 99, calls={2, 9})
    vocab = GPTConfig(vocab_size=100, seq_len=16, d_model=32, n_layer=1, n_head=2)
    run, engine = _run(kit, _cfg(steps=20, nonfinite=policy), sampler, vocab, {"poison": 99})
    run.sampler.vocab_size = 100
    unchanged = []
    while not run.done:  # skip: the proxy stays exactly as it was (AdamW has momentum)
        before, count = kit.flat(engine), int(engine.counters()["nonfinite"])
        run.step()
        if int(engine.counters()["nonfinite"]) > count:
            unchanged.append(np.array_equal(kit.flat(engine), before))
    # zero: the gradient only is zeroed, so momentum and weight decay still move the proxy
    assert unchanged == ([True, True] if policy == "skip" else [False, False])
    result = run.run(progress=False)
    assert np.isfinite(kit.flat(engine)).all() and np.isfinite(result.trajectory).all()
    last = result.metrics[-1]
    assert last["nonfinite"] == 2 and last["first_nonfinite"] == 2
    if policy == "zero":
        return
    sampler = PoisonRows(toy_sampler(seq_len=16), 99, calls={2})
    run, _ = _run(kit, _cfg(steps=20, nonfinite="raise"), sampler, vocab, {"poison": 99})
    run.sampler.vocab_size = 100
    with pytest.raises(tc.NonFiniteError, match="non-finite training loss at proxy step 2"):
        run.run(progress=False)


class BadBatches:
    def __init__(self, base, mutate):
        self.base, self.mutate = base, mutate
        for attr in ("domains", "val_domains", "seq_len", "vocab_size"):
            setattr(self, attr, getattr(base, attr))

    def train_batch(self, per_domain):
        return self.mutate(self.base.train_batch(per_domain))

    def __getattr__(self, name):
        return getattr(self.base, name)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: {**b, "domain": b["domain"] + 5}, r"domain id \d+ is outside \[0, 3\)"),
        (lambda b: {**b, "labels": b["labels"][:, :-1]}, r"batch\['labels'\] has shape"),
        (lambda b: {**b, "tokens": b["tokens"] + 40}, r"token id \d+ outside \[0, 16\)"),
        (lambda b: {**b, "tokens": b["tokens"].astype(np.float32)}, "must hold integers"),
    ],
)
def test_bad_batches_are_reported_before_the_device(kit, mutate, message):
    run, _ = _run(kit, _cfg(), BadBatches(toy_sampler(seq_len=16), mutate))
    with pytest.raises(ValueError, match=message):
        run.run(progress=False)


def test_resume_mid_episode_is_bitwise(kit, tmp_path):
    cfg = _cfg(steps=30, log_every=7)
    full = _run(kit, cfg)[0].run(progress=False)
    run, _ = _run(kit, cfg)
    while run.tick < 9:  # inside the second episode's probing
        run.step()
    tc.save_state(tmp_path / "ckpt.npz", run.state_dict())
    resumed, _ = _run(kit, cfg)
    resumed.load_state_dict(tc.load_state(tmp_path / "ckpt.npz"))
    result = resumed.run(progress=False)
    np.testing.assert_array_equal(result.trajectory, full.trajectory)
    np.testing.assert_array_equal(result.average, full.average)
    assert [m["alpha"] for m in result.metrics] == [m["alpha"] for m in full.metrics]


@pytest.mark.parametrize("method", ["tandem", "doremi", "doge", "uniform"])
def test_no_host_sync_inside_the_loop(kit, method):
    cfg = _cfg(method=method, steps=40, log_every=1000, reference_steps=3)
    run, _ = _run(kit, cfg)
    for _ in range(3):
        run.step()  # compile / warm up outside the guard
    with kit.no_host_sync():
        for _ in range(14):  # two whole toy episodes (K=2, E=3: sync, probes, update, frees)
            run.step()
    run.log()  # reading statistics is what logging steps are for


@pytest.mark.slow
def test_torch_compile_run_matches_eager():
    pytest.importorskip("torch")
    from backend_kits import TorchKit

    kit = TorchKit()
    results = [
        _run(kit, _cfg(steps=12, dtype="float64"), options={"compile": c})[0].run(progress=False)
        for c in (False, True)
    ]
    np.testing.assert_allclose(results[0].trajectory, results[1].trajectory, rtol=1e-9)


def test_uncopyable_optimizer_fails_clearly_at_sync():
    torch = pytest.importorskip("torch")
    import threading

    from backend_kits import TorchKit

    class LockedSGD(torch.optim.SGD):
        def step(self, closure=None):
            for p in self.param_groups[0]["params"]:
                self.state[p]["lock"] = threading.Lock()  # not deep-copyable
            return super().step(closure)

    kit = TorchKit()
    run, engine = _run(kit, _cfg(), optimizer=lambda params, lr: LockedSGD(params, lr=lr))
    run.step()  # sync of fresh (empty) states works
    run.step()
    with pytest.raises(TypeError, match="LockedSGD cannot be copied for twin synchronisation"):
        engine.sync()


@pytest.mark.parametrize("method", ["tandem", "doremi", "uniform"])
def test_gradient_accumulation_equals_one_big_batch(kit, method):
    cfg = dict(method=method, steps=14, dtype="float64", reference_steps=4, val_batch_size=8)
    whole, t1 = _run(kit, _cfg(**cfg))
    parts, t4 = _run(kit, _cfg(accumulate=4, **cfg))
    r1, r4 = whole.run(progress=False), parts.run(progress=False)
    np.testing.assert_allclose(r4.trajectory, r1.trajectory, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kit.flat(t4), kit.flat(t1), rtol=1e-9, atol=1e-12)
    assert len(r4.trajectory) == len(r1.trajectory)  # the mixture moves once per optimizer step
