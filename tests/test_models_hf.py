"""Hugging Face causal LMs as proxy models: build, validate, train with every method (torch)."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: everything is local files
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from toy_data import toy_sampler  # noqa: E402

import tandem_core as tc  # noqa: E402
from tandem_adapters import jobs  # noqa: E402
from tandem_adapters.cli import main  # noqa: E402
from tandem_adapters.config import JobConfig  # noqa: E402
from tandem_adapters.models import adapter_for, build_model  # noqa: E402
from tandem_core import ConfigError  # noqa: E402
from tandem_core.backend import training_backend  # noqa: E402
from tandem_core.run import MixtureRun, TrainConfig  # noqa: E402
from tandem_core.run import ModelSpec as ModelConfig  # noqa: E402
from tandem_torch import logits_and_hidden  # noqa: E402

BACKEND = training_backend("torch")

ARCHS = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=16),
    "llama": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=16,
    ),
}


def write_config(folder, arch="gpt2", **overrides):
    kw = {**ARCHS[arch], "bos_token_id": 0, "eos_token_id": 0, **overrides}
    transformers.AutoConfig.for_model(arch, **kw).save_pretrained(folder)
    return str(folder)


@pytest.fixture(params=sorted(ARCHS))
def arch_config(request, tmp_path):
    return request.param, write_config(tmp_path / request.param, request.param)


def hf(path, key="hf_config", seed=0, *, vocab_size=16, seq_len=16, backend="torch"):
    spec = ModelConfig(kind="hf", seed=seed, **{key: path})
    return build_model(spec, backend=backend, vocab_size=vocab_size, seq_len=seq_len)


def train_cfg(**kw):
    base = dict(steps=12, batch_per_domain=3, val_batch_size=6, eval_per_domain=3, log_every=4)
    if kw.get("method", "tandem") == "tandem":
        base.update(probe_steps=2, free_steps=2)
    return TrainConfig.from_mapping({**base, **kw})


def make_engine(model, cfg, m=3, v=1, **options):
    options = BACKEND.Options(**{"device": "cpu", **options})
    return BACKEND.make_engine(model, cfg, num_domains=m, num_val_domains=v, options=options)


def mixture_run(model, cfg, sampler=None, **options):
    sampler = sampler or toy_sampler(seq_len=16)
    m, v = len(sampler.domains), len(sampler.val_domains)
    engine = make_engine(model, cfg, m, v, **options)
    return MixtureRun(engine, sampler, cfg), engine


def test_forward_loss_and_hidden_states(arch_config):
    arch, path = arch_config
    model = hf(path)
    tokens = torch.randint(0, 16, (3, 16))
    logits, hidden = logits_and_hidden(model, dict(model.named_parameters()), tokens)
    assert logits.shape == (3, 16, 64) and hidden.shape == (3, 16, 32)
    base = model.transformer if arch == "gpt2" else model.model  # the final-norm output
    torch.testing.assert_close(hidden, base(tokens).last_hidden_state)
    labels = torch.roll(tokens, -1, 1)
    labels[0, 5:] = tc.IGNORE_INDEX
    labels[2] = tc.IGNORE_INDEX  # nothing scored: loss 0
    adapter = adapter_for(model)
    loss = adapter.per_sample_loss({"tokens": tokens.numpy(), "labels": labels.numpy()})
    ce = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), labels, ignore_index=tc.IGNORE_INDEX, reduction="none"
    )
    want = ce.sum(1) / (labels != tc.IGNORE_INDEX).sum(1).clamp_min(1)
    torch.testing.assert_close(loss, want)
    assert loss[2] == 0 and loss.shape == (3,)
    torch.testing.assert_close(adapter.hidden_states({"tokens": tokens}), hidden)


def test_dropout_is_off_and_init_follows_the_seed(tmp_path):
    path = write_config(tmp_path / "g", resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model = hf(path)
    assert model.training and model.config.resid_pdrop == 0.0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    tokens = torch.randint(0, 16, (2, 16))
    torch.testing.assert_close(model(tokens).logits, model(tokens).logits, rtol=0, atol=0)
    same, other = hf(path), hf(path, seed=1)
    for (name, a), b in zip(model.named_parameters(), same.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_from_pretrained_loads_the_saved_weights(tmp_path):
    saved = hf(write_config(tmp_path / "cfg"), seed=3)
    saved.save_pretrained(tmp_path / "model")
    loaded = hf(str(tmp_path / "model"), key="hf_path")
    assert loaded.training
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "method, extra",
    [
        ("tandem", {}),
        ("tandem", {"fuse_twins": True}),
        ("doremi", {"reference_steps": 4}),
        ("doge", {}),
        ("uniform", {}),
    ],
    ids=["tandem", "tandem-fused", "doremi", "doge", "uniform"],
)
def test_every_method_runs_through_mixture_run(arch_config, method, extra):
    model = hf(arch_config[1])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    options = {k: extra.pop(k) for k in list(extra) if k == "fuse_twins"}
    run, engine = mixture_run(model, train_cfg(method=method, **extra), **options)
    result = run.run(False)
    assert result.steps == 12 and np.isfinite(result.average).all()
    np.testing.assert_allclose(result.average.sum(), 1.0, rtol=1e-5)
    assert (result.average >= 0).all() and np.isfinite(result.val_losses).all()
    moved = [not torch.equal(before[k], v) for k, v in engine.twins.proxy.named_parameters()]
    assert all(moved)
    if method != "uniform":
        assert not np.allclose(result.average, 1 / 3)
    vmapped = options.get("fuse_twins") or method == "doge"
    assert model.config._attn_implementation == ("eager" if vmapped else "sdpa")


def test_fused_twins_equal_sequential_in_float64(arch_config):
    # both on eager attention (the fused run switches to it): Llama's eager kernel takes its
    # softmax in float32, so SDPA and eager differ by ~1e-7 even in float64
    runs = {}
    for fuse in (False, True):
        model = hf(arch_config[1])
        model.set_attn_implementation("eager")
        run, engine = mixture_run(model, train_cfg(dtype="float64"), fuse_twins=fuse)
        runs[fuse] = (run.run(False), engine)
    (seq, t_seq), (fused, t_fused) = runs[False], runs[True]
    np.testing.assert_allclose(fused.trajectory, seq.trajectory, rtol=1e-9, atol=1e-12)
    for a, b in zip(t_seq.twins.reference.parameters(), t_fused.twins.reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_domain_gradients_match_plain_autograd(tmp_path):
    from tandem_torch.grads import domain_gradients

    model = hf(write_config(tmp_path / "g"), vocab_size=16)  # GPT-2: tied embeddings
    doge = train_cfg(method="doge", dtype="float64")  # the engine casts the model
    make_engine(model, doge)
    assert model.config._attn_implementation == "eager"
    batch = toy_sampler(seq_len=16).train_batch(2)
    batch = {k: torch.as_tensor(v) for k, v in batch.items()}
    grads, _, _ = domain_gradients(model, batch, 3)
    for d in range(3):
        rows = slice(2 * d, 2 * d + 2)
        model.zero_grad()
        loss = adapter_for(model).per_sample_loss({k: v[rows] for k, v in batch.items()})
        loss.mean().backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][d], p.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_vmapped_paths_fail_early_when_attention_cannot_switch(tmp_path, monkeypatch):
    model = hf(write_config(tmp_path / "g"))
    monkeypatch.setattr(type(model), "set_attn_implementation", lambda self, impl: None)
    for cfg, options, key in (
        (train_cfg(), {"fuse_twins": True}, "fuse_twins"),
        (train_cfg(method="doge"), {}, "alignment"),
    ):
        with pytest.raises(ConfigError, match=key):
            make_engine(model, cfg, **options)
    make_engine(model, train_cfg())  # sequential: fine


def test_validation_errors_name_the_keys(tmp_path):
    good = write_config(tmp_path / "good")
    with pytest.raises(ConfigError, match=r"vocab_size=64 .*\(100 tokens\)"):
        hf(good, vocab_size=100)
    with pytest.raises(ConfigError, match=r"n_positions=16 .*data.seq_len=32"):
        hf(good, seq_len=32)
    llama = write_config(tmp_path / "llama", "llama")
    with pytest.raises(ConfigError, match=r"max_position_embeddings=16 .*data.seq_len=17"):
        hf(llama, seq_len=17)
    pytest.importorskip("jax")
    with pytest.raises(ConfigError, match=r"model.kind='hf'.*run.backend='torch'"):
        hf(good, backend="jax")
    with pytest.raises(ConfigError, match="model.hf_config=.*no such file"):
        hf(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="model.hf_path=.*no config.json"):
        hf(str(tmp_path / "empty"), key="hf_path")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="model.hf_config=.*cannot read the config"):
        hf(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="model.hf_path=.*cannot build the model"):
        hf(good, key="hf_path")  # a config without weights
    with pytest.raises(ConfigError, match="exclusive"):
        ModelConfig(kind="hf", hf_config=good, hf_path=good)


def test_a_config_file_works_as_well_as_its_folder(tmp_path):
    folder = write_config(tmp_path / "g")
    a, b = hf(folder), hf(os.path.join(folder, "config.json"))
    torch.testing.assert_close(a.lm_head.weight, b.lm_head.weight, rtol=0, atol=0)


def job(tmp_path, config, **train):
    return JobConfig.from_mapping(
        {
            "model": {"kind": "hf", "hf_config": config},
            "train": {**dict(steps=24, batch_per_domain=2, val_batch_size=4), **train},
            "run": {"run_dir": str(tmp_path / "run"), "progress": False},
            "data": {"suite": "planted", "suite_vocab_size": 32, "seq_len": 16},
        }
    )


def check_mixture_json(run_dir, steps):
    doc = json.loads((run_dir / "mixture.json").read_text())
    weights = np.asarray(list(doc["average"].values()))
    assert doc["steps"] == steps and len(weights) == len(doc["domains"]) >= 2
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    assert (weights >= 0).all()
    return doc


def test_optimize_and_train_jobs_end_to_end(tmp_path):
    config = write_config(tmp_path / "g", "llama")
    cfg = job(tmp_path / "opt", config, probe_steps=2, free_steps=4, eval_per_domain=2)
    result = jobs.optimize(cfg, echo=lambda *a: None)
    doc = check_mixture_json(tmp_path / "opt" / "run", 24)
    assert doc["method"] == "tandem" and not np.allclose(result.average, result.average[0])
    cfg = job(tmp_path / "train", config, eval_per_domain=2)
    result = jobs.train(cfg, doc["average"], echo=lambda *a: None)
    doc = check_mixture_json(tmp_path / "train" / "run", 24)
    assert doc["fixed"] and np.isfinite(result.val_losses).all()


def test_cli_optimize_with_an_hf_config(tmp_path, capsys):
    config = write_config(tmp_path / "g")
    run_dir = tmp_path / "run"
    sets = [
        "model.kind=hf",
        f"model.hf_config={config}",
        f"run.run_dir={run_dir}",
        "train.steps=12",
        "train.batch_per_domain=2",
        "train.val_batch_size=4",
        "train.eval_per_domain=2",
        "train.probe_steps=2",
        "train.free_steps=2",
        "data.seq_len=16",
    ]
    assert main(["optimize", "-q", *[a for s in sets for a in ("--set", s)]]) == 0
    check_mixture_json(run_dir, 12)
    assert "mixture.json" in capsys.readouterr().out
    bad = [
        a
        for s in [*sets[:2], f"run.run_dir={tmp_path / 'r2'}", "data.seq_len=32"]
        for a in ("--set", s)
    ]
    assert main(["optimize", "-q", *bad]) == 2
    assert "n_positions=16" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_torch_compile_matches_eager_on_an_hf_model(tmp_path):
    # dynamo reads .grad of fake non-leaf tensors while tracing transformers' GPT-2 (torch 2.13)
    path = write_config(tmp_path / "g")
    results = [
        mixture_run(hf(path), train_cfg(steps=6, dtype="float64"), compile=c)[0].run(False)
        for c in (False, True)
    ]
    np.testing.assert_allclose(results[1].trajectory, results[0].trajectory, rtol=1e-9)
    np.testing.assert_allclose(results[1].val_losses, results[0].val_losses, rtol=1e-9)
