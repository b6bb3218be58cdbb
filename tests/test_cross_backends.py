"""Cross-backend equivalence: torch and JAX give the same numbers from the same weights and data."""

import numpy as np
import pytest
from backend_kits import SMALL, JaxKit, TorchKit, toy_config
from toy_data import toy_sampler

import tandem_core as tc
from tandem_core.run import MixtureRun
from tandem_core.run.gpt import init_gpt_params

pytestmark = pytest.mark.cross
pytest.importorskip("torch")
pytest.importorskip("jax")

KITS = (TorchKit(), JaxKit())


def _cfg(**kw):
    return toy_config(**{"log_every": 5, "probe_steps": 3, "free_steps": 4, **kw})


def _runs(cfg, seed=0):
    params = init_gpt_params(SMALL, seed)
    out = []
    for kit in KITS:
        sampler = toy_sampler(seq_len=16, seed=seed)
        engine = kit.engine(kit.model(SMALL, params, cfg.dtype), cfg, 3, 1)
        out.append((kit, MixtureRun(engine, sampler, cfg), engine))
    return out


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-9)])
def test_losses_and_domain_stats_agree(dtype, rtol):
    params = init_gpt_params(SMALL, 1)
    batch = toy_sampler(seq_len=16).train_batch(5)
    batch["labels"][0, 10:] = tc.IGNORE_INDEX
    results = []
    for kit in KITS:
        loss, n = kit.losses(kit.model(SMALL, params, dtype), batch)
        stats = tc.domain_stats(loss, batch["domain"], 3, counts=(n > 0).astype(loss.dtype))
        results.append((loss, stats))
    (lt, st), (lj, sj) = results
    np.testing.assert_allclose(lt, lj, rtol=rtol)
    np.testing.assert_allclose(st.sums, sj.sums, rtol=rtol)
    np.testing.assert_array_equal(st.counts, sj.counts)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adamw", 3e-3)])
def test_one_full_episode_agrees(optimizer, lr):
    cfg = _cfg(
        optimizer=optimizer, lr=lr, momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=0.01
    )
    runs = _runs(cfg)
    infos = []
    for kit, run, engine in runs:
        for _ in range(run.schedule.length):  # SYNC, K probes, UPDATE, E free steps
            run.step()
        infos.append((run.state, run._info, kit.flat(engine), kit.flat(engine, "reference")))
    (st, it, ut, wt), (sj, ij, uj, wj) = infos
    np.testing.assert_allclose(np.asarray(it["delta"]), np.asarray(ij["delta"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(st.alpha), np.asarray(sj.alpha), atol=1e-5)
    scale = np.abs(ut).max()
    np.testing.assert_allclose(ut, uj, atol=1e-4 * scale)
    np.testing.assert_allclose(wt, wj, atol=1e-4 * scale)


@pytest.mark.parametrize("method", ["tandem", "doremi", "doge"])
def test_whole_runs_agree(method):
    cfg = _cfg(method=method, steps=60, reference_steps=20, probe_steps=5, free_steps=10)
    results = [run.run(progress=False) for _, run, _ in _runs(cfg)]
    np.testing.assert_allclose(results[0].trajectory, results[1].trajectory, atol=2e-4)
    np.testing.assert_allclose(results[0].val_losses, results[1].val_losses, rtol=1e-4)
    for a, b in zip(results[0].metrics, results[1].metrics):
        assert a["step"] == b["step"]
        for d in a.get("train_loss", {}):
            assert a["train_loss"][d] == pytest.approx(b["train_loss"][d], rel=1e-4)


def test_checkpoint_from_torch_resumes_on_jax_mixture_state(tmp_path):
    # the mixture state is portable: learned on torch, continued on JAX
    (_, run_t, _), (_, run_j, _) = _runs(_cfg())
    for _ in range(2 * run_t.schedule.length):
        run_t.step()
    tc.save_state(tmp_path / "mix.npz", run_t.state)
    import jax.numpy as jnp

    state = tc.load_state(tmp_path / "mix.npz", xp=jnp)
    np.testing.assert_array_equal(np.asarray(state.alpha), run_t.state.alpha.numpy())
    run_j.state = state
    run_j.step()
