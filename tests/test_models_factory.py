"""Custom models from ``model.module = "package.module:factory"`` and the uniform model adapter."""

import numpy as np
import pytest
from toy_data import toy_sampler

import tandem_core as tc
from tandem_adapters.models import adapter_for, build_model
from tandem_core import ConfigError
from tandem_core.backend import training_backend
from tandem_core.run import MixtureRun, TrainConfig
from tandem_core.run import ModelSpec as ModelConfig
from tandem_core.run.gpt import GPTConfig, gpt_forward_numpy, init_gpt_params

V, T = 16, 16


def build(name, backend="torch", vocab_size=V, seq_len=T, seed=0):
    spec = ModelConfig(kind="module", module=f"custom_models:{name}", seed=seed)
    return build_model(spec, backend=backend, vocab_size=vocab_size, seq_len=seq_len)


def batch(rows=3, seed=0):
    tokens = np.random.default_rng(seed).integers(0, V, size=(rows, T)).astype(np.int32)
    labels = np.roll(tokens, -1, axis=1)
    labels[0, 5:] = tc.IGNORE_INDEX
    labels[-1] = tc.IGNORE_INDEX  # nothing scored: loss 0
    return {"tokens": tokens, "labels": labels}


def reference_losses(logits, labels):
    """Token-mean CE over scored labels, numpy float64."""
    logits = np.asarray(logits, dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = labels != tc.IGNORE_INDEX
    nll = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    return (nll * keep).sum(-1) / np.maximum(keep.sum(-1), 1)


def cfg(**kw):
    base = dict(steps=8, batch_per_domain=3, val_batch_size=6, eval_per_domain=3, log_every=4)
    if kw.get("method", "tandem") == "tandem":
        base.update(probe_steps=2, free_steps=2)
    return TrainConfig.from_mapping({**base, **kw})


def make_engine(backend, model, config, **options):
    b = training_backend(backend)
    return b.make_engine(
        model, config, num_domains=3, num_val_domains=1, options=b.Options(**options)
    )


def short_run(backend, model, config, **options):
    sampler = toy_sampler(seq_len=T)
    return MixtureRun(make_engine(backend, model, config, **options), sampler, config).run(False)


# ---------------------------------------------------------------- torch
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name, hidden", [("torch_logits", False), ("torch_hidden", True)])
def test_torch_factory_builds_seeded_modules_that_train(torch, name, hidden):
    model = build(name)
    assert isinstance(model, torch.nn.Module)
    again, other = build(name), build(name, seed=1)
    assert torch.equal(model.head.weight, again.head.weight)
    assert not torch.equal(model.head.weight, other.head.weight)
    adapter = adapter_for(model)
    b = batch()
    logits, h = adapter.logits_and_hidden(b["tokens"])
    assert logits.shape == (3, T, V) and (h is not None) == hidden
    loss = adapter.per_sample_loss(b)
    np.testing.assert_allclose(
        loss.detach().numpy(), reference_losses(logits.detach(), b["labels"]), rtol=1e-5
    )
    result = short_run("torch", model, cfg(), fuse_twins=True)
    assert result.steps == 8 and np.isfinite(result.average).all()


def test_vmapped_runs_refuse_dropout_early(torch):
    model = build("torch_dropout")
    for config, options, key in (
        (cfg(), {"fuse_twins": True}, "fuse_twins"),
        (cfg(method="doge"), {}, "alignment"),
    ):
        with pytest.raises(ConfigError, match=f"{key}.*dropout \\(1: p=0.2\\)"):
            make_engine("torch", model, config, **options)
    assert short_run("torch", model, cfg()).steps == 8  # sequential twins: allowed


def test_logits_and_hidden_accepts_every_output_form(torch):
    from tandem_torch import logits_and_hidden

    tokens = torch.randint(0, V, (2, T))
    for name, has_hidden in (("torch_logits", False), ("torch_hidden", True), ("torch_dict", True)):
        model = build(name)
        logits, hidden = logits_and_hidden(model, dict(model.named_parameters()), tokens)
        assert logits.shape == (2, T, V)
        assert (hidden.shape == (2, T, 8)) if has_hidden else hidden is None

    class Weird(torch.nn.Module):
        def forward(self, tokens):
            return {"scores": tokens}

    with pytest.raises(TypeError, match="expected logits"):
        logits_and_hidden(Weird(), {}, tokens)


@pytest.mark.parametrize(
    "name, message",
    [
        ("not_a_model", "returned dict, not a torch nn.Module"),
        ("eqx_logits", "not a torch nn.Module .*set run.backend='jax'"),
        ("torch_small_vocab", r"logits of shape \(1, 16, 15\)"),
        ("wrong_signature", r"must accept factory\(vocab_size=..., seq_len=...\)"),
        ("NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_torch_factory_errors(torch, name, message):
    if name == "eqx_logits":
        pytest.importorskip("equinox")
    with pytest.raises(ConfigError, match=message):
        build(name)


def test_bad_module_paths():
    # found before any backend is involved (tandem_core.run.model.load_factory)
    from tandem_core.run.model import load_factory

    with pytest.raises(ConfigError, match="cannot import 'no_such_package.models'"):
        load_factory("no_such_package.models:make")
    with pytest.raises(ConfigError, match="expected 'package.module:factory'"):
        load_factory("custom_models:")
    with pytest.raises(ConfigError, match="model.kind='module' needs model.module"):
        ModelConfig(kind="module", module="no_colon")


# ---------------------------------------------------------------- jax
@pytest.fixture
def jax():
    pytest.importorskip("equinox")
    return pytest.importorskip("jax")


def test_jax_logits_only_module_is_wrapped_and_runs(jax):
    from tandem_jax.modules import LogitsOnly

    model = build("eqx_logits", backend="jax")
    assert isinstance(model, LogitsOnly)
    logits, hidden = model(jax.numpy.zeros((2, T), dtype=jax.numpy.int32))
    assert logits.shape == (2, T, V) and hidden is None
    assert not isinstance(build("eqx_hidden", backend="jax"), LogitsOnly)
    result = short_run("jax", model, cfg(), fuse_twins=True)
    assert result.steps == 8 and np.isfinite(result.average).all()
    assert not np.allclose(result.average, 1 / 3)


@pytest.mark.parametrize(
    "name, message",
    [
        ("not_a_model", "returned dict, not an equinox.Module"),
        ("torch_logits", "not an equinox.Module .*set run.backend='torch'"),
        ("eqx_broken", r"calling the model on tokens \(1, 16\) failed"),
    ],
)
def test_jax_factory_errors(jax, name, message):
    if name == "torch_logits":
        pytest.importorskip("torch")
    with pytest.raises(ConfigError, match=message):
        build(name, backend="jax")


# ---------------------------------------------------------------- the adapter on every source
def _sources():
    out = []
    small = GPTConfig(vocab_size=V, seq_len=T, d_model=16, n_layer=1, n_head=2)
    for backend, mod in (("torch", "torch"), ("jax", "equinox")):
        try:
            __import__(mod)
        except ImportError:
            continue
        out.append(pytest.param(backend, "tiny_gpt", small, id=f"{backend}-tiny_gpt"))
        out.append(pytest.param(backend, "hidden", None, id=f"{backend}-module"))
        out.append(pytest.param(backend, "logits", None, id=f"{backend}-logits-only"))
    return out


@pytest.mark.parametrize("backend, source, small", _sources())
def test_adapter_for_every_source(backend, source, small):
    b = batch()
    if source == "tiny_gpt":
        spec = ModelConfig(d_model=small.d_model, n_layer=1, n_head=2)
        model = build_model(spec, backend=backend, vocab_size=V, seq_len=T)
        ref_logits, ref_hidden = gpt_forward_numpy(init_gpt_params(small, 0), b["tokens"], small)
    else:
        model = build(f"{'torch' if backend == 'torch' else 'eqx'}_{source}", backend=backend)
    adapter = adapter_for(model)
    assert adapter.backend == backend and adapter_for(model, backend).backend == backend
    with pytest.raises(ConfigError, match="not a model of backend"):
        adapter_for(model, "jax" if backend == "torch" else "torch")
    logits, _ = adapter.logits_and_hidden(b["tokens"])
    loss = np.asarray(adapter.per_sample_loss(b).tolist())
    assert loss.shape == (3,) and loss[-1] == 0
    np.testing.assert_allclose(loss, reference_losses(logits.tolist(), b["labels"]), rtol=1e-5)
    if source == "logits":
        with pytest.raises(ConfigError, match="does not return hidden states"):
            adapter.hidden_states(b)
        return
    hidden = np.asarray(adapter.hidden_states(b).tolist())
    assert hidden.shape[:2] == (3, T)
    if source == "tiny_gpt":
        np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loss, reference_losses(ref_logits, b["labels"]), rtol=1e-4)


def test_adapter_rejects_non_models():
    with pytest.raises(ConfigError, match="not a model of backend any installed backend"):
        adapter_for(object())
