"""ADAPT in training: the weighted step of both backends, the run loop, the CLI and jobs.

The core math (pooling, centroid, gate) is tested in test_adapt.py; here the same quantities come
out of the backends' training steps and are checked against hand-written loops on the numpy GPT.
"""

import json

import numpy as np
import pytest
from backend_kits import SMALL, available_kits, toy_config
from toy_data import ToySampler, toy_sampler
from utils import a_backend, asarray, assert_close

import tandem_core as tc
from tandem_core.run import GPTConfig, MixtureRun, ModelSpec, TrainConfig
from tandem_core.run.gpt import gpt_forward_numpy, init_gpt_params

KITS = available_kits()


def _cfg(**kw):
    return toy_config(
        **{
            "method": "uniform",
            "weighting": "adapt",
            "steps": 12,
            "log_every": 4,
            "adapt_refresh": 5,
            "adapt_tau": 0.2,
            "adapt_anchor_batch": 8,
            "adapt_anchor_max": 12,
            "eval_max_per_domain": 8,
            "dtype": "float64",  # one dtype and batch shape for all: JAX compiles each step once
            "val_batch_size": 32,
            "eval_per_domain": 16,
            **kw,
        }
    )


def _run(kit, cfg, sampler=None, seed=0, engine_kw=None, **run_kw):
    engine_kw = engine_kw or {}
    sampler = sampler or toy_sampler(seq_len=16)
    model = kit.model(SMALL, init_gpt_params(SMALL, seed), cfg.dtype)
    engine = kit.engine(model, cfg, len(sampler.domains), len(sampler.val_domains), **engine_kw)
    return MixtureRun(engine, sampler, cfg, **run_kw), engine


def _padded_batch(sampler):
    batch = sampler.train_batch(4)
    batch["labels"][0, 9:] = tc.IGNORE_INDEX  # right padding: tokens 0..9 are valid
    batch["tokens"][0, 10:] = 0
    batch["labels"][5] = tc.IGNORE_INDEX  # no scored label: no valid token, not counted
    batch["labels"][9, :3] = tc.IGNORE_INDEX  # a "prompt": unscored but valid input tokens
    return batch


def _pool_loop(hidden, labels):
    """phi(x) by hand: valid tokens up to one past the last scored label, weights i / sum j."""
    out = np.zeros((hidden.shape[0], hidden.shape[2]))
    for row in range(hidden.shape[0]):
        scored = np.flatnonzero(labels[row] != tc.IGNORE_INDEX)
        if not scored.size:
            continue
        n = min(scored[-1] + 2, hidden.shape[1])
        for i in range(n):
            out[row] += (i + 1) / (n * (n + 1) / 2) * hidden[row, i]
    return out


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


# --- configuration --------------------------------------------------------------------------------


def test_config_keys_are_validated():
    cfg = TrainConfig.from_mapping({"weighting": "adapt", "method": "uniform"})
    assert (cfg.adapt.adapt_tau, cfg.adapt.adapt_refresh, cfg.adapt.adapt_clip) == (0.1, 50, None)
    assert cfg.to_mapping()["weighting"] == "adapt"
    for kw, message in [
        ({"weighting": "softmax"}, r"weighting='softmax' is not one of \('none', 'adapt'"),
        ({"adapt_tau": -1.0}, "adapt_tau must be finite and >= 0"),
        ({"adapt_tau": float("nan")}, "adapt_tau must be finite"),
        ({"adapt_refresh": 0}, "adapt_refresh must be > 0"),
        ({"adapt_clip": 0.0}, "adapt_clip must be > 0"),
        ({"adapt_anchor_batch": 0}, "adapt_anchor_batch must be > 0"),
        ({"bm25_b": 1.5}, r"bm25_b must be in \[0, 1\]"),
        ({"adapt_refresh": 2.5}, "adapt_refresh must be int"),
        ({"weighting": "adapt", "eta_alpha": 2.0, "method": "uniform"}, "eta_alpha is a key of"),
    ]:
        with pytest.raises(tc.ConfigError, match=message):
            TrainConfig.from_mapping(kw)
    cfg = TrainConfig.from_mapping({"weighting": "bm25", "bm25_tau": 0.5, "adapt_tau": 0.01})
    gate = cfg.adapt.transform(cfg.weighting).gate
    np.testing.assert_allclose(gate(np.array([1.0])), [1 / (1 + np.exp(-2.0))])


@pytest.mark.parametrize("method", ["tandem", "doremi", "doge"])
def test_weighting_needs_a_static_mixture(method):
    pytest.importorskip("torch")
    from backend_kits import TorchKit

    with pytest.raises(tc.ConfigError, match=f"not with method='{method}'"):
        _run(TorchKit(), _cfg(method=method))


def test_adapt_mask_by_hand(xp):
    labels = np.array([[1, 2, -100, -100], [-100, -100, 3, -100], [-100] * 4, [1, 1, 1, 1]])
    want = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert_close(tc.input_mask(asarray(xp, labels)), np.array(want, dtype=bool), xp=xp)


def test_bm25_term_weights_score_like_bm25_scores(rng):
    docs = [rng.integers(0, 20, size=rng.integers(1, 10)) for _ in range(30)]
    anchors = [rng.integers(0, 20, size=rng.integers(1, 6)) for _ in range(5)]
    q = tc.bm25_term_weights(anchors, 20, k1=1.2, b=0.5)
    want = tc.bm25_scores(docs, anchors, k1=1.2, b=0.5)
    np.testing.assert_allclose([q[d].sum() for d in docs], want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"anchor token ids must be in \[0, 20\)"):
        tc.bm25_term_weights([[3, 25]], 20)


# --- the weighted step against hand-written loops -------------------------------------------------


def test_step_weights_match_hand_loop_pooling_centroid_and_gate(kit):
    cfg = _cfg(adapt_tau=0.05, adapt_clip=0.9)
    run, trainer = _run(kit, cfg)
    params = {k: v.astype(np.float64) for k, v in init_gpt_params(SMALL, 0).items()}
    anchors = run.weighting.anchors
    state = trainer.anchor_refresh(run.weighting.transform, None, anchors, 0)
    batch = _padded_batch(run.sampler)
    _, info = trainer.weighted_step(batch, run.state.alpha, run.weighting.transform, state)
    # anchors: pooled by hand, compared pairwise (the mean of cosines, not the centroid)
    phi_v = []
    for b in anchors:
        h = gpt_forward_numpy(params, b["tokens"], SMALL)[1]
        phi_v += [p for p, lab in zip(_pool_loop(h, b["labels"]), b["labels"]) if (lab >= 0).any()]
    assert len(phi_v) == 12  # adapt_anchor_max windows; the padding rows are left out
    phi_x = _pool_loop(gpt_forward_numpy(params, batch["tokens"], SMALL)[1], batch["labels"])
    scores = np.array([np.mean([_cos(x, v) for v in phi_v]) for x in phi_x])
    weights = np.minimum(1 / (1 + np.exp(-scores / 0.05)), 0.9)
    np.testing.assert_allclose(np.asarray(info.scores), scores, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(info.weights), weights, rtol=1e-10, atol=1e-12)
    assert np.ptp(scores) > 0.01 and info.weights.shape == (12,)
    np.testing.assert_allclose(np.asarray(state.centroid), np.mean(_unit(phi_v), 0), atol=1e-12)
    assert int(np.asarray(state.last_refresh)) == 0 and int(np.asarray(state.count)) == 1
    # per-domain weight sums leave out the row without a scored label
    scored = (batch["labels"] >= 0).any(1)
    want = np.bincount(batch["domain"][scored], weights=weights[scored], minlength=3)
    np.testing.assert_allclose(np.asarray(info.per_domain.sums), want, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(info.per_domain.counts), [4, 3, 4])


def _unit(v):
    v = np.asarray(v)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_step_descends_the_weighted_objective_with_constant_weights(kit):
    # SGD: u_1 = u_0 - lr * grad of sum_m alpha_m sum_{i in m} w_i l_i / N_m, w held constant
    # (stop-gradient), whatever the backend; the reference gradient is torch autograd
    torch = pytest.importorskip("torch")
    from tandem_torch import TinyGPT, per_sample_loss

    cfg = _cfg(optimizer="sgd", lr=0.5, grad_clip=None, adapt_tau=0.05)
    run, trainer = _run(kit, cfg)
    state = trainer.anchor_refresh(run.weighting.transform, None, run.weighting.anchors, 0)
    batch = _padded_batch(run.sampler)
    _, info = trainer.weighted_step(batch, run.state.alpha, run.weighting.transform, state)
    w = np.asarray(info.weights)
    ref = TinyGPT(SMALL, init_gpt_params(SMALL, 0), dtype=torch.float64)
    logits = ref(torch.as_tensor(batch["tokens"]))
    losses, n = per_sample_loss(logits, torch.as_tensor(batch["labels"]))
    counts = np.bincount(batch["domain"][(batch["labels"] >= 0).any(1)], minlength=3)
    scale = torch.as_tensor(w / counts[batch["domain"]] / 3)  # alpha_m / N_m, alpha uniform
    (losses * scale).sum().backward()
    got = kit.params(trainer)
    for name, p in ref.named_parameters():
        want = (p - 0.5 * p.grad).detach().numpy()
        np.testing.assert_allclose(got[name], want, rtol=1e-9, atol=1e-12, err_msg=name)
    assert np.ptp(w) > 0.05  # the weights really differ between rows


@pytest.mark.parametrize("weighting", ["adapt", "bm25"])
def test_gradient_accumulation_equals_one_big_batch(kit, weighting):
    cfg = dict(weighting=weighting, steps=8)
    (whole, t1), (parts, t4) = _run(kit, _cfg(**cfg)), _run(kit, _cfg(accumulate=4, **cfg))
    r1, r4 = whole.run(progress=False), parts.run(progress=False)
    np.testing.assert_allclose(kit.flat(t4), kit.flat(t1), rtol=1e-9, atol=1e-12)
    for a, b in zip(r1.metrics, r4.metrics):
        if "weights" in a:
            for key in ("weights", "scores", "weight_by_domain"):
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12)


# --- the run loop: schedule, logging, resume, no host sync ----------------------------------------


def test_anchor_refresh_every_r_steps_and_logged_distributions(kit):
    run, trainer = _run(kit, _cfg(steps=12, adapt_refresh=5, log_every=4))
    calls = []
    original = trainer.anchor_refresh

    def spy(transform, state, batches, step):
        calls.append(step)
        return original(transform, state, batches, step)

    trainer.anchor_refresh = spy
    result = run.run(progress=False)
    assert calls == [0, 5, 10]
    assert int(np.asarray(run.weighting.state.last_refresh)) == 10
    rows = [m for m in result.metrics if "weights" in m]
    assert [m["step"] for m in rows] == [4, 8, 12] and rows[-1]["anchor_refreshes"] == 3
    for m in rows:
        w, s = m["weights"], m["scores"]
        assert 0 <= w["min"] <= w["q10"] <= w["q50"] <= w["q90"] <= w["max"] <= 1
        assert -1 <= s["min"] <= s["mean"] <= s["max"] <= 1
        assert set(m["weight_by_domain"]) == {"target", "related", "noise"}
    summary = result.weighting
    assert summary["kind"] == "adapt" and summary["anchor_refreshes"] == 3
    mean = np.mean([m["weights"]["mean"] for m in rows])  # equal rows per logging window
    assert summary["weight_mean"] == pytest.approx(mean, rel=1e-5)


@pytest.mark.parametrize("weighting", ["adapt", "bm25"])
def test_resume_between_refreshes_is_bitwise(kit, tmp_path, weighting):
    cfg = _cfg(weighting=weighting, steps=14, adapt_refresh=4, log_every=5)
    full_run, full_trainer = _run(kit, cfg)
    full = full_run.run(progress=False)
    run, _ = _run(kit, cfg)
    while run.proxy_step < 7:  # after the refresh at 4, mid logging window
        run.step()
    tc.save_state(tmp_path / "ckpt.npz", run.state_dict())
    resumed, trainer = _run(kit, cfg)
    resumed.load_state_dict(tc.load_state(tmp_path / "ckpt.npz"))
    result = resumed.run(progress=False)
    np.testing.assert_array_equal(kit.flat(trainer), kit.flat(full_trainer))
    strip = [{k: v for k, v in m.items() if k != "elapsed_s"} for m in result.metrics]
    assert strip == [{k: v for k, v in m.items() if k != "elapsed_s"} for m in full.metrics]
    assert result.weighting == full.weighting


@pytest.mark.parametrize("weighting", ["adapt", "bm25"])
def test_no_host_sync_inside_the_weighted_loop(kit, weighting):
    cfg = _cfg(weighting=weighting, steps=40, log_every=1000, adapt_refresh=3, accumulate=4)
    run, _ = _run(kit, cfg)
    for _ in range(4):
        run.step()  # compile / warm up (and the first refreshes) outside the guard
    with kit.no_host_sync():
        for _ in range(6):  # two anchor refreshes (steps 6 and 9)
            run.step()
    assert run.weighting.refreshes == (4 if weighting == "adapt" else 0)
    run.log()


def test_sampling_in_proportion_gives_the_plain_weighted_mean(kit):
    result = _run(kit, _cfg(sampling="sample", steps=6))[0].run(progress=False)
    assert result.steps == 6 and 0 < result.weighting["weight_mean"] < 1


@pytest.mark.parametrize(
    "backend, name, ok",
    [
        ("torch", "torch_hidden", True),
        ("torch", "torch_dict", True),  # a Hugging Face-style output with hidden_states
        ("torch", "torch_logits", False),
        ("jax", "eqx_hidden", True),
        ("jax", "eqx_logits", False),
    ],
)
def test_custom_models_need_hidden_states(backend, name, ok):
    pytest.importorskip(backend)
    b = tc.backend.training_backend(backend)
    spec = ModelSpec(kind="module", module=f"custom_models:{name}")
    model = b.build_model(spec, vocab_size=16, seq_len=16)
    cfg = _cfg(steps=3, log_every=3, dtype="float32")
    options = b.Options()

    def engine(cfg):
        return b.make_engine(model, cfg, num_domains=3, num_val_domains=1, options=options)

    run = MixtureRun(engine(cfg), toy_sampler(seq_len=16), cfg)
    if not ok:
        with pytest.raises(tc.ConfigError, match="does not return hidden states"):
            run.run(progress=False)
        bm25 = _cfg(weighting="bm25", steps=2, dtype="float32")  # lexical: no hidden states
        assert (
            MixtureRun(engine(bm25), toy_sampler(seq_len=16), bm25).run(progress=False).steps == 2
        )
        return
    result = run.run(progress=False)
    assert 0 < result.weighting["weight_mean"] < 1 and result.metrics[0]["weights"]["max"] <= 1


@pytest.mark.slow  # the hidden_states path also runs in the default suite (torch_dict above)
def test_hugging_face_model_weights_from_its_last_hidden_states(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    kw = dict(n_embd=32, n_layer=1, n_head=2, vocab_size=16, n_positions=16)
    kw.update(bos_token_id=0, eos_token_id=0)
    transformers.AutoConfig.for_model("gpt2", **kw).save_pretrained(tmp_path)
    b = tc.backend.training_backend("torch")
    spec = ModelSpec(kind="hf", hf_config=str(tmp_path))
    model = b.build_model(spec, vocab_size=16, seq_len=16)
    cfg = _cfg(steps=4, log_every=4, dtype="float32", adapt_tau=1.0)
    options = b.Options(device="cpu")
    engine = b.make_engine(model, cfg, num_domains=3, num_val_domains=1, options=options)
    result = MixtureRun(engine, toy_sampler(seq_len=16), cfg).run(progress=False)
    w = result.metrics[0]["weights"]
    assert 0 <= w["min"] < w["max"] <= 1 and result.weighting["anchor_refreshes"] == 1


# --- behaviour on synthetic suites ----------------------------------------------------------------


def _planted_run(kit, weighting, steps=400):
    from tandem_adapters.data import TokenSampler, make_suite

    sampler = TokenSampler(make_suite("planted", seed=0, vocab_size=32), 16, seed=0)
    gpt = GPTConfig(vocab_size=32, seq_len=16, d_model=32, n_layer=1, n_head=2)
    cfg = TrainConfig.from_mapping(
        dict(
            method="uniform",
            weighting=weighting,
            steps=steps,
            batch_per_domain=8,
            log_every=100,
            adapt_refresh=20,
            eval_max_per_domain=64,
        )
    )
    engine = kit.engine(kit.model(gpt, init_gpt_params(gpt, 0)), cfg, 5, 1)
    return MixtureRun(engine, sampler, cfg).run(progress=False)


# JAX compiles this model shape only here: slow there (the backends agree: test_*_agree)
SLOW_JAX = [
    pytest.param(*p.values, id=p.id, marks=[pytest.mark.slow] * (p.id == "jax")) for p in KITS
]


@pytest.mark.parametrize("kit_cls", SLOW_JAX)
def test_planted_suite_off_distribution_gets_lower_weight_and_val_loss_no_worse(kit_cls):
    kit = kit_cls()
    plain, weighted = _planted_run(kit, "none"), _planted_run(kit, "adapt")
    w = weighted.weighting["weight_by_domain"]
    # off the target distribution: a trivial pattern and uniform noise; on it: target samples
    assert max(w["easy"], w["noise"]) < w["target_like"]
    assert w["easy"] < 0.7 < w["target_like"]
    late = weighted.metrics[-2]["weight_by_domain"]  # the last window of training
    assert max(late["easy"], late["noise"]) < min(late["target_like"], late["related"])
    # same budget, same batches: the target validation loss is no worse (seeds 0-4 at 400 steps:
    # 0.003 to 0.017 nats better; at 200 steps the difference is within +-0.005 either way)
    assert weighted.val_losses[0] <= plain.val_losses[0] + 1e-3


def test_bm25_weights_follow_lexical_overlap_with_the_anchors(kit):
    # vocabularies: on-target rows use tokens 0..7 like the anchors, off-target rows 8..15
    rng = np.random.default_rng(0)
    on, off = rng.integers(0, 8, 4000), rng.integers(8, 16, 4000)
    mixed = np.where(rng.random(4000) < 0.5, on, off)
    val = [rng.integers(0, 8, 2000)]
    sampler = ToySampler([on, mixed, off], val, 16, names=["on", "mixed", "off"])
    result = _run(kit, _cfg(weighting="bm25", steps=6), sampler)[0].run(progress=False)
    w = result.weighting["weight_by_domain"]
    assert w["off"] < w["mixed"] < w["on"]
    assert result.weighting["bm25_mean_std"][1] > 0


@pytest.mark.slow
def test_torch_compile_weighted_run_matches_eager():
    pytest.importorskip("torch")
    from backend_kits import TorchKit

    kit, flats = TorchKit(), []
    for compile_ in (False, True):
        run, trainer = _run(
            kit, _cfg(steps=8, adapt_refresh=3), engine_kw={"options": {"compile": compile_}}
        )
        run.run(progress=False)
        flats.append(kit.flat(trainer))
    np.testing.assert_allclose(flats[1], flats[0], rtol=1e-9, atol=1e-12)


def _rank_main(rank, world, port, out):
    import hashlib
    import os

    import torch
    import torch.distributed as dist
    from backend_kits import TorchKit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run, trainer = _run(TorchKit(), _cfg(steps=8, adapt_refresh=3, accumulate=2))
        run.run(progress=False)
        digest = hashlib.sha256(run.weighting.state.centroid.numpy().tobytes()).hexdigest()
        gathered = [None] * world
        dist.all_gather_object(gathered, digest)
        if rank == 0:
            np.savez(out, flat=TorchKit().flat(trainer), same=len(set(gathered)) == 1)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    torch_mp = pytest.importorskip("torch.multiprocessing")
    import socket

    from backend_kits import TorchKit

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "rank0.npz"
    torch_mp.spawn(_rank_main, args=(2, port, str(out)), nprocs=2, join=True)
    got = np.load(out)
    run, trainer = _run(TorchKit(), _cfg(steps=8, adapt_refresh=3, accumulate=2))
    run.run(progress=False)
    assert got["same"]  # every rank embeds every anchor: identical centroids
    np.testing.assert_allclose(got["flat"], TorchKit().flat(trainer), rtol=1e-9, atol=1e-12)


JAX_SHARDED = """
import sys, json
sys.path.insert(0, {tests!r})
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import tandem_core as tc
from tandem_core.run import MixtureRun
from tandem_core.run.gpt import init_gpt_params
from backend_kits import SMALL, JaxKit
from test_adapt_training import _cfg, _run
assert len(jax.devices()) == 4, jax.devices()
out = {{}}
for name, devices in (("single", None), ("sharded", jax.devices())):
    kit = JaxKit()
    cfg = _cfg(weighting={weighting!r}, steps=6, adapt_refresh=3)
    sampler = __import__("toy_data").toy_sampler(seq_len=16)
    model = kit.model(SMALL, init_gpt_params(SMALL, 0), cfg.dtype)
    trainer = kit.engine(model, cfg, 3, 1, devices=devices)
    result = MixtureRun(trainer, sampler, cfg).run(progress=False)
    out[name] = [kit.flat(trainer).tolist(), result.weighting["weight_by_domain"]]
print("RESULT", json.dumps(out))
"""


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["adapt", "bm25"])
def test_jax_sharded_over_four_devices_equals_single_device(weighting):
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    script = JAX_SHARDED.format(tests=os.path.dirname(__file__), weighting=weighting)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    np.testing.assert_allclose(out["sharded"][0], out["single"][0], rtol=1e-9, atol=1e-12)
    assert out["sharded"][1] == pytest.approx(out["single"][1], rel=1e-9)


# --- torch vs JAX ---------------------------------------------------------------------------------


@pytest.mark.cross
@pytest.mark.parametrize("weighting", ["adapt", "bm25"])
def test_torch_and_jax_weighted_runs_agree(weighting):
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    from backend_kits import JaxKit, TorchKit

    cfg = _cfg(weighting=weighting, steps=10, adapt_refresh=3, accumulate=4)
    out = []
    for kit in (TorchKit(), JaxKit()):
        run, trainer = _run(kit, cfg)
        out.append((run.run(progress=False), kit.flat(trainer)))
    (rt, pt), (rj, pj) = out
    np.testing.assert_allclose(pt, pj, atol=1e-6)  # float64; gradient clipping differs ~1e-8
    for a, b in zip(rt.metrics, rj.metrics):
        for key in ("weights", "scores", "weight_by_domain", "train_loss", "val_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-8), key
    for key in ("weight_mean", "weight_by_domain"):
        assert rt.weighting[key] == pytest.approx(rj.weighting[key], rel=1e-6)


# --- jobs and CLI ---------------------------------------------------------------------------------

SMALL_JOB = [
    "model.d_model=32",
    "model.n_layer=1",
    "model.n_head=2",
    "data.seq_len=16",
    "data.suite_tokens_per_domain=4096",
    "train.batch_per_domain=4",
    "train.log_every=5",
    "train.steps=10",
    "train.adapt_refresh=4",
]


def _backends():
    return [p.id for p in KITS]


@pytest.mark.parametrize("backend", _backends())
def test_cli_train_with_adapt_and_an_anchor_file(tmp_path, backend):
    from tandem_adapters.cli import main
    from tandem_adapters.data import make_suite

    corpus = make_suite("planted", seed=0, vocab_size=32, tokens_per_domain=4096)
    anchor = tmp_path / "anchor.npy"
    np.save(anchor, corpus.train[corpus.domains.index("noise")][:800].astype(np.uint16))
    run_dir = tmp_path / "run"
    sets = [*SMALL_JOB, f"run.backend={backend}", f'run.run_dir="{run_dir}"']
    argv = ["train", "--weighting", "adapt", "--anchor", str(anchor), "-q"]
    assert main(argv + [x for s in sets for x in ("--set", s)]) == 0
    doc = json.loads((run_dir / "mixture.json").read_text())
    weighting = doc["weighting"]
    assert weighting["kind"] == "adapt" and weighting["anchor"] == str(anchor)
    assert set(weighting["weight_by_domain"]) == set(corpus.domains)
    assert 0 < weighting["weight_mean"] < 1 and weighting["anchor_refreshes"] == 3
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "weights" in r] == [5, 10]
    assert f'adapt_anchor = "{anchor}"' in (run_dir / "config.toml").read_text()


def test_cli_rejects_weighting_where_it_does_not_apply(tmp_path, capsys):
    from tandem_adapters.cli import main

    run_dir = tmp_path / "opt"
    sets = ["--set", "train.weighting=adapt", "--set", f'run.run_dir="{run_dir}"', "-q"]
    sets += ["--set", f"run.backend={a_backend()}"]
    assert main(["optimize", *sets]) == 2
    assert "not with method='tandem'" in capsys.readouterr().err
    assert not run_dir.exists()  # refused before anything was written
    assert main(["train", "--anchor", "x.txt", "-q", "--set", f"run.backend={a_backend()}"]) == 2
    assert "--anchor (train.adapt_anchor) needs --weighting" in capsys.readouterr().err


def test_python_api_train_with_in_memory_anchors(tmp_path):
    pytest.importorskip("torch")
    from tandem_adapters.config import JobConfig
    from tandem_adapters.jobs import train

    cfg = JobConfig.load(
        overrides=[*SMALL_JOB, "train.weighting=bm25", f'run.run_dir="{tmp_path / "r"}"']
    )
    cfg = cfg.replace(run={"progress": False})
    anchor = {"mine": np.arange(32).repeat(20) % 32}
    result = train(cfg, None, anchor=anchor, echo=lambda *a: None)
    assert result.weighting["kind"] == "bm25" and result.steps == 10
    doc = json.loads((tmp_path / "r" / "mixture.json").read_text())
    assert doc["weighting"]["anchor"] == "dict" and doc["fixed"] is True
