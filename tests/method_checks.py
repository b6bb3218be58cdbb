"""Invariants every registered method must keep, as functions (tests/test_methods.py runs them over
``all_methods()``; a plugin's own test file runs them over its method too).

- the transform: alpha on the simplex and finite after many updates of random statistics of the
  method's signal, under ``jax.jit`` on JAX, in every array namespace;
- the record: its parameter dataclass validates and round-trips through ``TrainConfig``;
- the run: a short ``MixtureRun`` on each installed engine keeps the mixture on the simplex, and a
  run resumed from a checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
from backend_kits import SMALL, toy_config
from toy_data import toy_sampler
from utils import asarray, jit

import tandem_core as tc
from tandem_core._utils import to_numpy
from tandem_core.methods import Method, Signal, planned_updates
from tandem_core.run import MixtureRun
from tandem_core.run.gpt import init_gpt_params

SIZES = [3000.0, 1000.0, 6000.0, 500.0]
LR = 3e-3  # the proxy's learning rate, a run fact (DoGE's reference step reads it)


def fake_signal(signal: Signal, xp, m: int, rng: np.random.Generator):
    """Random statistics of the kind ``signal`` delivers, in ``xp`` (one domain missing)."""
    ids = asarray(xp, np.concatenate([np.arange(m - 1), np.arange(m - 1)]))
    losses = lambda: asarray(xp, rng.uniform(0.5, 3.0, size=2 * (m - 1)))  # noqa: E731
    if signal is Signal.NONE:
        return None
    if signal is Signal.TWIN:
        return tc.TwinStats(tc.domain_stats(losses(), ids, m), tc.domain_stats(losses(), ids, m))
    if signal is Signal.ALIGNMENT:
        norms = rng.uniform(0.1, 10.0, size=m)
        return tc.AlignmentStats(
            asarray(xp, rng.normal(size=m) * norms),
            asarray(xp, norms),
            asarray(xp, np.asarray(rng.uniform(0.1, 10.0))),
        )
    return tc.domain_stats(losses(), ids, m)  # per-domain losses / excess losses


def check_transform(method: Method, xp, updates: int = 30) -> None:
    m = len(SIZES)
    params = method.make_params()
    transform = method.build(params, sizes=SIZES, history=8, num_domains=m, updates=updates, lr=LR)
    state = transform.init(m, xp=xp, dtype=xp.float64)
    update = jit(xp, transform.update)
    rng = np.random.default_rng(0)
    for _ in range(updates):
        state = update(state, fake_signal(method.signal, xp, m, rng))
        alpha = to_numpy(state.alpha)
        assert np.isfinite(alpha).all(), f"{method.name}: alpha not finite {alpha}"
        assert (alpha >= -1e-12).all() and abs(alpha.sum() - 1) < 1e-9, f"{method.name}: {alpha}"
    assert int(to_numpy(state.count)) == updates
    summary = tc.mixture_summary(state)
    assert abs(to_numpy(summary.average).sum() - 1) < 1e-9


def check_record(method: Method) -> None:
    params = method.make_params()
    cfg = tc_train_config(method.name)
    assert cfg.params == params and cfg.to_mapping()["method"] == method.name
    again = type(cfg).from_mapping(cfg.to_mapping())
    assert again == cfg
    assert method.plan(params) is not None and method.summary


def tc_train_config(name: str):
    from tandem_core.run import TrainConfig

    return TrainConfig.from_mapping({"method": name})


def run_method(kit, name: str, steps: int = 10, **kw):
    cfg = toy_config(method=name, steps=steps, log_every=5, dtype="float64", **kw)
    sampler = toy_sampler(seq_len=16)
    model = kit.model(SMALL, init_gpt_params(SMALL, 0), cfg.dtype)
    engine = kit.engine(model, cfg, len(sampler.domains), len(sampler.val_domains))
    return MixtureRun(engine, sampler, cfg)


def check_run_and_resume(kit, name: str, tmp_path, **kw) -> None:
    run = run_method(kit, name, **kw)
    full = run.run(progress=False)
    planned = planned_updates(run.plan, run.config.steps)  # what the transform was built for
    assert int(to_numpy(run.state.count)) == planned, f"{name}: {run.state.count} != {planned}"
    assert np.isfinite(full.trajectory).all() and len(full.trajectory) > 0
    np.testing.assert_allclose(full.trajectory.sum(1), 1.0, atol=1e-9)
    assert (full.trajectory >= 0).all()
    run = run_method(kit, name, **kw)
    while run.proxy_step < 4:
        run.step()
    tc.save_state(tmp_path / f"{name}.npz", run.state_dict())
    resumed = run_method(kit, name, **kw)
    resumed.load_state_dict(tc.load_state(tmp_path / f"{name}.npz"))
    result = resumed.run(progress=False)
    np.testing.assert_array_equal(result.trajectory, full.trajectory)
    np.testing.assert_array_equal(result.average, full.average)
