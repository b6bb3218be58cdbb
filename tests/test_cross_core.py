"""The core gives the same numbers on torch and JAX arrays, and states move between them."""

import numpy as np
import pytest

import tandem_core as tc

pytestmark = pytest.mark.cross
torch = pytest.importorskip("torch")
jnp = pytest.importorskip("jax.numpy")
xpt = pytest.importorskip("array_api_compat.torch")


def _run(xp, make_array, dtype=np.float32):
    t = tc.tandem(
        eta_alpha=0.4, step="eg", normalize="rms", smoothing=1e-3, missing="skip", history=4
    )
    state = t.init(5, xp=xp, dtype=getattr(xp, np.dtype(dtype).name))
    rng = np.random.default_rng(3)
    for _ in range(6):
        ids = rng.integers(0, 4, size=12)  # domain 4 is always missing
        u = rng.gamma(2.0, size=12).astype(dtype)
        w = (u + rng.normal(0, 0.01, size=12)).astype(dtype)
        stats = tc.TwinStats(
            tc.domain_stats(make_array(u), make_array(ids), 5),
            tc.domain_stats(make_array(w), make_array(ids), 5),
        )
        state = t.update(state, stats)
    return state


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_torch_and_jax_agree(dtype, tol):
    # float32: Delta is a difference of near-equal means, so its error is absolute, not relative
    st = _run(xpt, torch.asarray, dtype)
    sj = _run(jnp, jnp.asarray, dtype)
    np.testing.assert_allclose(st.alpha.numpy(), np.asarray(sj.alpha), rtol=0, atol=tol)
    assert st.missing.tolist() == np.asarray(sj.missing).tolist() == [0, 0, 0, 0, 6]


def test_state_saved_from_torch_loads_into_jax(tmp_path):
    st = _run(xpt, torch.asarray)
    tc.save_state(tmp_path / "s.npz", st)
    back = tc.load_state(tmp_path / "s.npz", xp=jnp)
    assert isinstance(back.alpha, type(jnp.zeros(1)))
    np.testing.assert_array_equal(np.asarray(back.history), st.history.numpy())
    t = tc.tandem(
        eta_alpha=0.4, step="eg", normalize="rms", smoothing=1e-3, missing="skip", history=4
    )
    t.update(back, jnp.zeros(5, dtype=jnp.float32))  # and it keeps working on the other side
