"""The JAX twins as pure functions (``tandem_jax.twins``) and the engine built on them."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

import tandem_core as tc  # noqa: E402
import tandem_jax as tj  # noqa: E402
from tandem_adapters.data import TokenSampler, make_suite  # noqa: E402
from tandem_core.methods import Signal, get_method  # noqa: E402
from tandem_core.run import GPTConfig, MixtureRun, TrainConfig, init_gpt_params  # noqa: E402

CFG = GPTConfig(17, 16, 16, 1, 2)  # vocab 17: the data uses 0..15, token 16 poisons (test f)
POISON = 16
K, E, STEPS = 2, 3, 10  # two episodes of 2 probe + 3 free steps
KEYS = {
    "steps": STEPS,
    "probe_steps": K,
    "free_steps": E,
    "batch_per_domain": 4,
    "val_batch_size": 8,
    "eval_per_domain": 4,
    "log_every": 1000,
}


class Poisoned(eqx.Module):
    """Non-finite logits for every row that holds the token ``POISON``."""

    inner: eqx.Module

    def __call__(self, tokens):
        logits, hidden = self.inner(tokens)
        bad = jnp.where((tokens == POISON).any(-1), jnp.nan, 0.0).astype(logits.dtype)
        return logits + bad[:, None, None], hidden


def _sampler():
    corpus = make_suite("planted", vocab_size=16, tokens_per_domain=2000)
    return TokenSampler(corpus, CFG.seq_len, seed=0)


def _model():
    return Poisoned(tj.TinyGPT.create(CFG, init_gpt_params(CFG, 0)))


def _optimizer():
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(3e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0),
    )


def _twins(sampler):
    return tj.make_twins(
        _model(),
        _optimizer(),
        num_domains=len(sampler.domains),
        num_val_domains=len(sampler.val_domains),
    )


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def _user_loop(sampler):
    """The README's loop: pure twin functions, the default transform and ``tc.Schedule``."""
    spec, twins = _twins(sampler)
    m = len(sampler.domains)
    keys = {"probe_steps": K, "free_steps": E}
    transform = get_method("tandem").make_transform(keys, num_domains=m, steps=STEPS)
    update = jax.jit(transform.update)
    state = transform.init(len(sampler.domains), xp=jnp, dtype=jnp.float32)
    schedule = tc.Schedule(K, E)
    tick = taken = 0
    with jax.transfer_guard("disallow"):  # (d): no implicit transfer anywhere in the loop
        while taken < STEPS:
            match schedule.phase(tick):
                case tc.Phase.SYNC:
                    twins = tj.sync(twins)
                case tc.Phase.PROBE:
                    train, val = sampler.train_batch(4), sampler.val_batch(8)
                    twins, _ = tj.probe(spec, twins, train, val, state.alpha)
                    taken += 1
                case tc.Phase.UPDATE:
                    state = update(state, tj.stats(spec, twins, sampler.eval_batch(4)))
                case tc.Phase.FREE:
                    twins, _ = tj.step(spec, twins, sampler.train_batch(4), state.alpha)
                    taken += 1
            tick += 1
    return state, twins


def test_user_loop_matches_mixture_run():
    """(a) + (d): the same mixture and the same proxy, bit for bit, under the transfer guard."""
    state, twins = _user_loop(_sampler())
    sampler = _sampler()
    cfg = TrainConfig.from_mapping(KEYS)
    engine = tj.JaxEngine(
        _model(), cfg, len(sampler.domains), num_val_domains=len(sampler.val_domains)
    )
    result = MixtureRun(engine, sampler, cfg).run(progress=False)
    summary = tc.mixture_summary(state)
    np.testing.assert_array_equal(np.asarray(summary.average, np.float64), result.average)
    np.testing.assert_array_equal(np.asarray(summary.last, np.float64), result.last)
    assert len(result.trajectory) == 2
    _assert_same(twins.proxy, engine.twins.proxy)
    _assert_same(twins.opt_reference, engine.twins.opt_reference)


def test_engine_ticks_under_transfer_guard():
    """(d): the engine's ticks (sync, probe, measure, free) read nothing back."""
    sampler = _sampler()
    cfg = TrainConfig.from_mapping(KEYS)
    engine = tj.JaxEngine(
        _model(), cfg, len(sampler.domains), num_val_domains=len(sampler.val_domains)
    )
    run = MixtureRun(engine, sampler, cfg)
    with jax.transfer_guard("disallow"):
        for _ in range(2 * (K + E + 2)):
            run.step()
    assert run.proxy_step == STEPS and len(run.trajectory) == 2


def test_sync_copies_parameters_and_optimizer_state():
    """(b) + (c): after ``sync`` w equals u (parameters and optimizer state); Delta is 0."""
    sampler = _sampler()
    spec, twins = _twins(sampler)
    alpha = jnp.full(len(sampler.domains), 1 / len(sampler.domains), jnp.float32)
    for _ in range(2):
        twins, _ = tj.probe(spec, twins, sampler.train_batch(4), sampler.val_batch(8), alpha)
    assert float(tj.distance(twins)) > 0  # w followed its own objective
    synced = tj.sync(twins)
    _assert_same(synced.reference, synced.proxy)
    _assert_same(synced.opt_reference, synced.opt_proxy)
    _assert_same(synced.proxy, twins.proxy)
    assert float(tj.distance(synced)) == 0.0
    delta, present = tc.twin_delta(tj.stats(spec, synced, sampler.eval_batch(4)))
    assert bool(present.all())
    np.testing.assert_array_equal(np.asarray(delta), 0.0)


def test_functions_are_pure():
    """(e): the same inputs give the same outputs, and the inputs are left as they were."""
    sampler = _sampler()
    spec, twins = _twins(sampler)
    train, val = sampler.train_batch(4), sampler.val_batch(8)
    host = {k: v.copy() for k, v in {**train, **{"v" + k: v for k, v in val.items()}}.items()}
    before = _leaves(twins)
    alpha = jnp.asarray(np.linspace(1, 2, len(sampler.domains)) / 7.5, jnp.float32)
    first = tj.probe(spec, twins, train, val, alpha)
    second = tj.probe(spec, twins, train, val, alpha)
    _assert_same(first, second)
    for x, y in zip(before, _leaves(twins)):
        np.testing.assert_array_equal(x, y)
    for key, value in {**train, **{"v" + k: v for k, v in val.items()}}.items():
        np.testing.assert_array_equal(value, host[key])
    assert not np.array_equal(_leaves(first[0].proxy)[0], _leaves(twins.proxy)[0])


def test_nonfinite_loss_skips_the_step_exactly():
    """(f): a NaN loss keeps both models and optimizer states bit for bit, and is counted."""
    sampler = _sampler()
    spec, twins = _twins(sampler)
    alpha = jnp.full(len(sampler.domains), 1 / len(sampler.domains), jnp.float32)
    twins, _ = tj.step(spec, twins, sampler.train_batch(4), alpha)  # step 0: finite
    train = sampler.train_batch(4)
    train["tokens"][0, 0] = POISON
    after, _ = tj.step(spec, twins, train, alpha)  # step 1: non-finite
    _assert_same((after.proxy, after.opt_proxy), (twins.proxy, twins.opt_proxy))
    assert [int(c) for c in after.counters] == [2, 1, 1]
    probed, _ = tj.probe(spec, after, train, sampler.val_batch(8), alpha)  # step 2: both twins
    _assert_same((probed.proxy, probed.reference), (after.proxy, after.reference))
    _assert_same((probed.opt_proxy, probed.opt_reference), (after.opt_proxy, after.opt_reference))
    assert [int(c) for c in probed.counters] == [3, 2, 1]


def test_engine_proxy_losses_and_state_dict():
    """``Signal.PROXY_LOSSES`` reads the proxy's per-sample losses; a checkpoint restores."""
    sampler = _sampler()
    m = len(sampler.domains)
    cfg = TrainConfig.from_mapping({"method": "uniform", "batch_per_domain": 4})
    engine = tj.JaxEngine(_model(), cfg, m, num_val_domains=len(sampler.val_domains))
    state = engine.init_mixture(tc.uniform(), m)
    batch = sampler.train_batch(4)

    def means(s, stats):
        return s._replace(alpha=tc.domain_means(stats)[0])

    measured, info = engine.measure(Signal.PROXY_LOSSES, batch, state, means)
    tokens, labels = jnp.asarray(batch["tokens"]), jnp.asarray(batch["labels"])
    losses, _ = tj.loss(engine.spec, engine.twins.proxy, tokens, labels)
    expected = np.bincount(batch["domain"], np.asarray(losses), m) / np.bincount(batch["domain"])
    np.testing.assert_allclose(np.asarray(measured.alpha), expected, rtol=1e-6)
    assert info == {}
    saved = jax.tree.map(np.asarray, engine.state_dict())
    stepped, _ = engine.step(batch, state, signal=Signal.PROXY_LOSSES, update=means)
    np.testing.assert_allclose(np.asarray(stepped.alpha), np.asarray(measured.alpha), rtol=1e-6)
    engine.load_state_dict(saved)
    _assert_same(engine.state_dict(), saved)


def test_an_engine_frees_its_compiled_steps():
    # the engine jits its own closures over its spec: once it is gone nothing keeps the spec
    # (and its XLA executables, ~2,600 memory maps each) alive; a module-level jit with the spec
    # as a static argument would cache every engine ever built, up to the process's map limit
    import gc
    import weakref

    cfg = TrainConfig.from_mapping(KEYS)
    sampler = _sampler()
    engine = tj.JaxEngine(_model(), cfg, len(sampler.domains), num_val_domains=1)
    MixtureRun(engine, sampler, cfg).run(progress=False)
    spec = weakref.ref(engine.spec)
    del engine
    gc.collect()
    assert spec() is None
