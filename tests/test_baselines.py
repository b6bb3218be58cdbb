"""Faithful baselines (docs/methods.md, "DoReMi" and "DoGE").

DoGE: the reference code's score normalisation (its default) against float64 numbers worked by
hand, the alignment payload both backends deliver, and a mixture that stays smooth where the raw
alignment goes near one-hot. DoReMi: the reference model's mixture (natural, uniform, a file) and
iterated rounds, resumed bit for bit in the middle of a later round.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from backend_kits import SMALL, JaxKit, TorchKit, toy_config
from method_checks import LR
from toy_data import ToySampler, toy_sampler, toy_streams
from utils import asarray, assert_close, jit

import tandem_core as tc
from tandem_core._utils import to_numpy
from tandem_core.methods import Signal, get_method
from tandem_core.run import MixtureRun
from tandem_core.run.gpt import init_gpt_params
from tandem_core.run.reference import reference_weights

DOMAINS = ("target", "related", "noise")


# ---------------------------------------------------------------- DoGE: the update


def _doge_reference(scores, norms, val_norm, *, clip, score_clip, lr, mu):
    """The reference code's update as its trainer writes it, in float64 (one step from 1/M)."""
    scale = lambda n: min(1.0, clip / (n + 1e-6))  # noqa: E731  clip_grad_norm_
    g = np.array([scale(n) for n in norms])
    clipped = scores * g * scale(val_norm)
    w = lr * clipped / ((norms * g).mean() + 1e-6)  # W = lr_t <g_i, g_val> / (mean ||g|| + eps)
    w = np.clip(w, 0.0, score_clip * lr)
    log_a = np.log(np.full(len(scores), 1 / len(scores))) + w / mu
    return np.exp(log_a) / np.exp(log_a).sum()  # softmax, no smoothing


def test_doge_reference_update_by_hand(xp):
    # domain 2's gradient (norm 10) and the validation gradient (norm 8) are clipped to 5;
    # W = [3, -1, 12 * 0.5] * 0.625 / (mean(2, 1, 5) + 1e-6) -> [0.703, -0.234, 1.406],
    # clipped to [0, 1.2]: domain 1 gets no push, domain 2 the clip
    scores, norms, val_norm = np.array([3.0, -1.0, 12.0]), np.array([2.0, 1.0, 10.0]), 8.0
    record = get_method("doge")
    params = record.make_params({"score_clip": 1.2})
    t = record.build(params, num_domains=3, updates=1, lr=LR)
    stats = tc.AlignmentStats(*(asarray(xp, x) for x in (scores, norms, np.array(val_norm))))
    state = jit(xp, t.update)(t.init(3, xp=xp, dtype=xp.float64), stats)
    want = _doge_reference(scores, norms, val_norm, clip=5.0, score_clip=1.2, lr=LR, mu=0.01)
    assert_close(state.alpha, want, xp=xp, rtol=1e-12)
    w = np.array([3 * 0.625 / (8 / 3), 0.0, 1.2])  # by hand: 8/3 is the mean clipped norm
    hand = np.exp(0.3 * w) / np.exp(0.3 * w).sum()  # lr / mu = 0.3
    assert_close(state.alpha, hand, xp=xp, rtol=1e-5)
    assert_close(tc.mixture_summary(state).average, want, xp=xp, rtol=1e-12)


def test_doge_reference_step_is_bounded_whatever_the_gradient_scale(xp):
    t = get_method("doge").build(get_method("doge").make_params(), lr=LR)
    for scale in (1e-3, 1.0, 1e3):
        norms = np.array([1.0, 2.0, 3.0]) * scale
        stats = tc.AlignmentStats(
            asarray(xp, norms * norms * [1.0, -1.0, 0.5]), asarray(xp, norms), asarray(xp, 2.0)
        )
        alpha = to_numpy(t.update(t.init(3, xp=xp, dtype=xp.float64), stats).alpha)
        # log-ratio at most eta * score_clip = (lr / mu) * 5 = 1.5 per update
        assert np.log(alpha.max() / alpha.min()) <= 1.5 + 1e-12


def test_doge_none_is_the_former_update(xp):
    record = get_method("doge")
    t = record.build(record.make_params({"normalize": "none", "eta_mixture": 0.5}), lr=LR)
    old = tc.doge(eta=0.5, smoothing=1e-3, normalize="none")
    w = np.array([1.0, -1.0, 0.0])
    stats = tc.AlignmentStats(asarray(xp, w), asarray(xp, [3.0, 1.0, 2.0]), asarray(xp, 1.0))
    a = to_numpy(t.update(t.init(3, xp=xp, dtype=xp.float64), stats).alpha)
    b = to_numpy(old.update(old.init(3, xp=xp, dtype=xp.float64), asarray(xp, w)).alpha)
    e = np.exp(0.5 * w) / np.exp(0.5 * w).sum()
    np.testing.assert_allclose(a, 0.999 * e + 1e-3 / 3, rtol=1e-12)
    np.testing.assert_array_equal(a, b)


def test_doge_reference_needs_norms_and_the_learning_rate():
    t = tc.doge()
    with pytest.raises(TypeError, match="AlignmentStats"):
        t.update(t.init(3), np.array([1.0, 0.0, -1.0]))
    record = get_method("doge")
    with pytest.raises(tc.ConfigError, match="learning rate"):
        record.build(record.make_params())
    with pytest.raises(tc.ConfigError, match="normalize"):
        record.make_params({"normalize": "rms"})
    assert record.make_params().normalize == "reference"


# ---------------------------------------------------------------- DoGE: the signal on engines


def _engine(kit, cfg, sampler=None, seed=0):
    sampler = sampler or toy_sampler(seq_len=16)
    model = kit.model(SMALL, init_gpt_params(SMALL, seed), cfg.dtype)
    return kit.engine(model, cfg, len(sampler.domains), len(sampler.val_domains)), sampler


def _payload(kit, engine, train, val):
    """The alignment signal as the engine's ``measure`` hands it to ``update``."""
    state = engine.init_mixture(tc.uniform(), 3)
    stats, _ = engine.measure(Signal.ALIGNMENT, train, state, _identity, val=val)
    return [np.asarray(to_numpy(x), dtype=np.float64) for x in stats]


def _identity(state, stats):
    return stats


def test_alignment_payload_is_scores_and_gradient_norms(kit):
    cfg = toy_config(method="doge", dtype="float64")
    engine, sampler = _engine(kit, cfg)
    train, val = sampler.train_batch(4), sampler.val_batch(6)
    scores, norms, val_norm = _payload(kit, engine, train, val)
    g, g_val = kit.grads(engine, train, val, 3, 1)  # flat (M, P) and (P,), numpy
    np.testing.assert_allclose(scores, g @ g_val, rtol=1e-10)
    np.testing.assert_allclose(norms, np.linalg.norm(g, axis=1), rtol=1e-10)
    np.testing.assert_allclose(val_norm, np.linalg.norm(g_val), rtol=1e-10)
    assert scores.shape == norms.shape == (3,) and val_norm.shape == ()


@pytest.mark.cross
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-4), ("float64", 1e-10)])
def test_both_backends_deliver_the_same_alignment_payload(dtype, rtol):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    cfg = toy_config(method="doge", dtype=dtype)
    batches = toy_sampler(seq_len=16, seed=3)
    train, val = batches.train_batch(4), batches.val_batch(6)
    got = []
    for kit in (TorchKit(), JaxKit()):
        engine, _ = _engine(kit, cfg, seed=2)
        got.append(_payload(kit, engine, train, val))
    for name, a, b in zip(tc.AlignmentStats._fields, *got):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(a).max(), err_msg=name)


def test_doge_default_stays_smooth_where_the_raw_alignment_goes_near_one_hot(kit):
    peaks = {}
    for normalize in ("reference", "none"):
        cfg = toy_config(method="doge", steps=20, normalize=normalize, log_every=20)
        engine, sampler = _engine(kit, cfg)
        result = MixtureRun(engine, sampler, cfg).run(progress=False)
        assert result.trajectory.shape == (20, 3)
        peaks[normalize] = result.trajectory.max()
    assert peaks["none"] > 0.95  # eta = 1 on the raw <g_m, g_val>: near one-hot
    assert peaks["reference"] < 0.85, peaks


# ---------------------------------------------------------------- DoReMi: the reference mixture


def _unequal_sampler(seq_len=16):
    """The toy task with 6000, 3000 and 1500 training tokens: natural = [4, 2, 1] / 7."""
    train, val = toy_streams()
    train = [train[0], train[1][:3000], train[2][:1500]]
    return ToySampler(train, val, seq_len, names=list(DOMAINS), val_names=["target"])


def test_reference_weights_from_names_and_files(tmp_path):
    sizes = [6000, 3000, 1500]
    np.testing.assert_array_equal(reference_weights("uniform", DOMAINS, sizes), np.full(3, 1 / 3))
    np.testing.assert_allclose(reference_weights("natural", DOMAINS, sizes), [4 / 7, 2 / 7, 1 / 7])
    listed = tmp_path / "list.json"
    listed.write_text("[1, 1, 2]")
    np.testing.assert_allclose(reference_weights(str(listed), DOMAINS), [0.25, 0.25, 0.5])
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"noise": 0, "target": 3, "related": 1}))
    np.testing.assert_allclose(reference_weights(str(named), DOMAINS), [0.75, 0.25, 0.0])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    doc = {"format": "tandem-mixture", "average": {"target": 0.5, "related": 0.3, "noise": 0.2}}
    (run_dir / "mixture.json").write_text(json.dumps(doc))
    for path in (run_dir, run_dir / "mixture.json"):
        np.testing.assert_allclose(reference_weights(str(path), DOMAINS), [0.5, 0.3, 0.2])


@pytest.mark.parametrize(
    "text, problem",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "2 weights for 3 domains"),
        ('{"target": 1, "related": 1}', r"missing \['noise'\]"),
        ('{"target": 1, "related": 1, "noise": 1, "web": 1}', r"unknown \['web'\]"),
        ("[1, -1, 1]", ">= 0"),
        ("[0, 0, 0]", "not all 0"),
        ('[1, "a", 1]', "must be numbers"),
        ('{"format": "tandem-mixture", "last": {}}', "without 'average'"),
        ('"natural"', "got str"),
    ],
)
def test_a_bad_reference_file_names_itself_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "weights.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(tc.ConfigError, match=problem) as err:
        reference_weights(str(path), DOMAINS)
    assert str(path) in str(err.value)


def _doremi(kit, sampler=None, **kw):
    values = dict(steps=6, reference_steps=3, log_every=3, dtype="float64")
    cfg = toy_config(method="doremi", **{**values, **kw})
    engine, sampler = _engine(kit, cfg, sampler or _unequal_sampler())
    return MixtureRun(engine, sampler, cfg)


def test_natural_reference_differs_from_uniform(kit):
    assert get_method("doremi").make_params().reference_mixture == "natural"
    runs = {name: _doremi(kit, reference_mixture=name) for name in ("natural", "uniform")}
    for run in runs.values():
        while run.reference_step < 3:
            run.step()
    natural, uniform = (to_numpy(runs[k]._reference_state.alpha) for k in ("natural", "uniform"))
    np.testing.assert_allclose(natural, [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    np.testing.assert_allclose(uniform, np.full(3, 1 / 3), rtol=1e-12)
    w_natural = kit.flat(runs["natural"].engine, "reference")
    w_uniform = kit.flat(runs["uniform"].engine, "reference")
    assert not np.allclose(w_natural, w_uniform)  # the reference models differ
    np.testing.assert_array_equal(
        kit.flat(runs["natural"].engine), kit.flat(runs["uniform"].engine)
    )


def test_reference_from_a_file_and_sampled_reference_batches(kit, tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"target": 1.0, "related": 0.0, "noise": 3.0}))
    sampler = _unequal_sampler()
    drawn = []
    mixture_batch = sampler.mixture_batch
    sampler.mixture_batch = lambda alpha, size: drawn.append(alpha) or mixture_batch(alpha, size)
    run = _doremi(kit, sampler, reference_mixture=str(path), sampling="sample")
    while run.reference_step < 3:
        run.step()
    assert len(drawn) == 3
    for alpha in drawn:  # the reference phase samples its own mixture
        np.testing.assert_allclose(alpha, [0.25, 0.0, 0.75])
    np.testing.assert_allclose(to_numpy(run._reference_state.alpha), [0.25, 0.0, 0.75])


def test_a_bad_reference_file_fails_before_any_work(kit, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[0.5, 0.5]")
    with pytest.raises(tc.ConfigError, match=f"{path}.*2 weights for 3 domains"):
        _doremi(kit, reference_mixture=str(path))


# ---------------------------------------------------------------- DoReMi: iterated rounds


def test_round_two_trains_its_reference_on_round_one_output(kit):
    first = _doremi(kit).run(progress=False)
    run = _doremi(kit, rounds=2)
    start = kit.flat(run.engine)
    while run.proxy_step < 6:
        run.step()
    assert run.round == 0 and not run.done
    run.step()  # round 2 starts afresh and takes its first reference step
    assert run.round == 1 and run.reference_step == 1 and run.proxy_step == 6
    np.testing.assert_array_equal(kit.flat(run.engine), start)  # the proxy restarted
    np.testing.assert_array_equal(run.round_mixtures[0], first.average)
    np.testing.assert_allclose(to_numpy(run._reference_state.alpha), first.average, rtol=1e-12)
    result = run.run(progress=False)
    assert result.steps == 12 and result.trajectory.shape == (6, 3)
    assert sorted({row["round"] for row in result.metrics}) == [0, 1]
    assert not np.allclose(result.average, first.average)


@pytest.mark.parametrize("where", ["reference phase", "main phase"])
def test_resume_in_the_middle_of_round_two_is_bit_identical(kit, tmp_path, where):
    kw = dict(steps=4, reference_steps=2, rounds=3, log_every=2)
    full_run = _doremi(kit, **kw)
    full = full_run.run(progress=False)
    run = _doremi(kit, **kw)
    if where == "reference phase":
        stop = lambda r: r.round == 1 and r.reference_step == 1  # noqa: E731
    else:
        stop = lambda r: r.round == 1 and r.proxy_step == 6  # noqa: E731
    while not stop(run):
        run.step()
    tc.save_state(tmp_path / "round2.npz", run.state_dict())
    resumed = _doremi(kit, **kw)
    resumed.load_state_dict(tc.load_state(tmp_path / "round2.npz"))
    result = resumed.run(progress=False)
    assert resumed.round == 2 and len(resumed.round_mixtures) == 2
    for a, b in zip(resumed.round_mixtures, full_run.round_mixtures):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(result.trajectory, full.trajectory)
    np.testing.assert_array_equal(result.average, full.average)
    np.testing.assert_array_equal(kit.flat(resumed.engine), kit.flat(full_run.engine))
    assert [row["alpha"] for row in result.metrics] == [row["alpha"] for row in full.metrics]
