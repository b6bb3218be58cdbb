import numpy as np
import pytest
from reference import eg_reference, project_simplex_bisection, project_simplex_grid
from utils import asarray, assert_close, jit

import tandem_core as tc
from tandem_core._utils import to_numpy


@pytest.mark.parametrize(
    "v, want",
    [
        ([1.0, 1.0, 0.0], [0.5, 0.5, 0.0]),
        ([0.5, 0.5, 1.0], [1 / 6, 1 / 6, 2 / 3]),  # theta = 1/3 worked by hand
        ([0.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]),
        ([10.0, 0.0, -3.0], [1.0, 0.0, 0.0]),
        ([-1.0, -1.0], [0.5, 0.5]),
    ],
)
def test_projection_hand_cases(xp, v, want):
    assert_close(jit(xp, tc.project_simplex)(asarray(xp, v)), want, xp=xp, atol=1e-12)


def test_projection_fixed_point(xp, rng):
    alpha = rng.dirichlet(np.ones(6), size=4)
    assert_close(tc.project_simplex(asarray(xp, alpha)), alpha, xp=xp, atol=1e-12)


def test_projection_random_vs_bisection_batched(xp, rng):
    v = rng.normal(size=(8, 7)) * 2.0
    want = np.stack([project_simplex_bisection(row) for row in v])
    got = jit(xp, tc.project_simplex)(asarray(xp, v))
    assert_close(got, want, xp=xp, atol=1e-10)


def test_projection_is_nearest_point_brute_force(rng):
    for _ in range(5):
        v = rng.normal(size=3)
        got = tc.project_simplex(v)
        grid = project_simplex_grid(v)
        # the exact projection is at least as close as the best grid point
        assert np.sum((got - v) ** 2) <= np.sum((grid - v) ** 2) + 1e-12
        np.testing.assert_allclose(got, grid, atol=2.0 / 400)


def test_projection_floor(xp, rng):
    v = rng.normal(size=(5, 6)) * 3
    got = tc.project_simplex(asarray(xp, v), floor=0.05)
    want = np.stack([project_simplex_bisection(row, floor=0.05) for row in v])
    assert_close(got, want, xp=xp, atol=1e-10)
    g = np.asarray(want)
    assert g.min() >= 0.05 - 1e-12
    np.testing.assert_allclose(g.sum(-1), 1.0)


def test_projection_floor_infeasible():
    with pytest.raises(ValueError, match="floor=0.25 is infeasible for M=4"):
        tc.project_simplex(np.zeros(4), floor=0.25)
    with pytest.raises(ValueError, match="floor must be >= 0"):
        tc.project_simplex(np.zeros(4), floor=-0.1)


def test_projection_shift_invariance(xp, rng):
    v = rng.normal(size=5)
    base = tc.project_simplex(asarray(xp, v))
    for c in (-3.0, 0.7, 100.0):
        assert_close(tc.project_simplex(asarray(xp, v + c)), np.asarray(base), xp=xp, atol=1e-9)


def test_projection_mask_keeps_frozen_coordinates(xp):
    v = np.array([0.5, 0.3, 0.9, -0.2])
    mask = np.array([True, False, True, True])
    got = tc.project_simplex(asarray(xp, v), total=0.7, mask=asarray(xp, mask))
    want = v.copy()
    want[mask] = project_simplex_bisection(v[mask], total=0.7)
    assert_close(got, want, xp=xp, atol=1e-10)


def test_projection_all_masked_is_identity(xp):
    v = np.array([0.2, 0.8])
    got = tc.project_simplex(asarray(xp, v), mask=asarray(xp, np.array([False, False])))
    assert_close(got, v, xp=xp)


def test_eg_step_hand_case(xp):
    got = jit(xp, tc.eg_step, static_argnums=2)(
        asarray(xp, [0.5, 0.5]), asarray(xp, [0.0, np.log(3.0)]), 1.0
    )
    assert_close(got, [0.75, 0.25], xp=xp)


def test_eg_step_vs_reference_and_extremes(xp, rng):
    alpha = rng.dirichlet(np.ones(5))
    grad = rng.normal(size=5)
    assert_close(
        tc.eg_step(asarray(xp, alpha), asarray(xp, grad), 0.7),
        eg_reference(alpha, grad, 0.7),
        xp=xp,
    )
    # a huge step must not overflow: all mass on the lowest gradient
    huge = tc.eg_step(asarray(xp, alpha), asarray(xp, grad), 1e6)
    want = np.zeros(5)
    want[np.argmin(grad)] = 1.0
    assert_close(huge, want, xp=xp, atol=1e-12)


def test_eg_step_zero_weight_stays_zero(xp):
    got = tc.eg_step(asarray(xp, [0.0, 0.4, 0.6]), asarray(xp, [-10.0, 0.0, 0.0]), 1.0)
    assert_close(got, [0.0, 0.4, 0.6], xp=xp)


def test_eg_steps_do_not_accumulate_rounding(xp):
    # normalising to 1 (not to alpha's own float32 sum) keeps the sum within a few roundings
    # over any number of steps; the old form drifted past 1e-6 in a few hundred steps
    rng = np.random.default_rng(5)
    alpha = asarray(xp, np.full((64, 8), 1 / 8, dtype=np.float32))
    grads = rng.normal(size=(1500, 64, 8)).astype(np.float32)
    step = jit(xp, lambda a, g: tc.eg_step(a, g, 0.3, checked=False))
    for t, grad in enumerate(grads):
        alpha = step(alpha, asarray(xp, grad))
        if t % 100 == 99:
            err = np.abs(to_numpy(alpha).astype(np.float64).sum(-1) - 1.0).max()
            assert err <= 4 * np.finfo(np.float32).eps, f"step {t}: sum off by {err}"


def test_eg_step_mask_keeps_mass(xp):
    alpha = np.array([0.1, 0.2, 0.3, 0.4])
    mask = np.array([True, True, False, True])
    got = tc.eg_step(
        asarray(xp, alpha), asarray(xp, [1.0, 0.0, 5.0, -1.0]), 0.5, mask=asarray(xp, mask)
    )
    z = alpha[mask] * np.exp(-0.5 * np.array([1.0, 0.0, -1.0]))
    want = alpha.copy()
    want[mask] = z / z.sum() * 0.7
    assert_close(got, want, xp=xp)


def test_smooth(xp):
    assert_close(tc.smooth(asarray(xp, [1.0, 0.0, 0.0, 0.0]), 0.2), [0.85, 0.05, 0.05, 0.05], xp=xp)
    with pytest.raises(ValueError, match="smoothing c must be in"):
        tc.smooth(np.ones(2) / 2, 1.5)


def test_time_average_and_running_mean(xp):
    s = asarray(xp, [[0.6, 1.4], [0.0, 0.0]])
    count = asarray(xp, [2, 0], dtype=xp.int32)
    fallback = asarray(xp, [[0.5, 0.5], [0.25, 0.75]])
    assert_close(tc.time_average(s, count, fallback), [[0.3, 0.7], [0.25, 0.75]], xp=xp)
    mean = asarray(xp, [0.2, 0.8])
    got = tc.running_mean(mean, asarray(xp, [0.5, 0.5]), asarray(xp, 2, dtype=xp.int32))
    assert_close(got, [0.3, 0.7], xp=xp)


# Large finite inputs (issue 12, section 2): the sort-and-threshold form summed raw coordinates,
# so their rounding (or overflow) swamped the unit mass.

LARGE = [
    ("float32", [3e7, -2e7, 1e7, 5e6, -2.5e7], [1.0, 0.0, 0.0, 0.0, 0.0]),
    ("float32", [1e30, -1e30, 1e30 * (1 - 2**-20)], [1.0, 0.0, 0.0]),
    ("float32", [-3e38, -3e38, 3e38], [0.0, 0.0, 1.0]),
    ("float64", [1e16, 2e16, 3e16], [0.0, 0.0, 1.0]),
    ("float64", [1e20, 2e20, 3e20], [0.0, 0.0, 1.0]),
    ("float64", [1e308, 1e308, 1e308], [1 / 3, 1 / 3, 1 / 3]),
    ("float64", [1e308, -1e308, 0.0], [1.0, 0.0, 0.0]),
    ("float64", [-1e308, -1e308], [0.5, 0.5]),
    ("float64", [1e16 + 2.0, 1e16, -1e16], [1.0, 0.0, 0.0]),  # 1e16 + 2 - 1e16 = 2 > mass 1
    ("float64", [2251799813685248.5, 2251799813685248.0], [0.75, 0.25]),  # 2**51 + 0.5
]


@pytest.mark.parametrize("dtype, v, want", LARGE)
def test_projection_exact_for_large_finite_inputs(xp, dtype, v, want):
    dt = getattr(xp, dtype)
    got = jit(xp, tc.project_simplex)(asarray(xp, np.asarray(v, dtype=dtype), dtype=dt))
    assert_close(got, want, xp=xp, atol=1e-7 if dtype == "float32" else 1e-15, dtype=dt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_projection_large_inputs_with_floor_vs_reference(xp, rng, dtype):
    scale = 10.0 ** rng.uniform(-3, 30 if dtype == "float32" else 300, size=(64, 1))
    v = (rng.normal(size=(64, 5)) * scale).astype(dtype)
    for floor in (0.0, 0.01, 0.19):
        got = jit(xp, tc.project_simplex, static_argnums=1)(asarray(xp, v), floor)
        want = np.stack([project_simplex_bisection(row, floor=floor) for row in v])
        assert_close(got, want, xp=xp, atol=1e-6 if dtype == "float32" else 1e-12)
        g = to_numpy(got).astype(np.float64)
        assert (g >= np.asarray(floor, dtype=dtype)).all()  # the floor in the dtype
        np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-6 if dtype == "float32" else 1e-14)


def test_projection_huge_inputs_raise_no_floating_point_warning():
    with np.errstate(all="raise"):  # no overflow in a shift, a sum or the threshold
        got = tc.project_simplex(np.array([[1e308, -1e308, 1e307], [-1e308] * 3]))
    np.testing.assert_array_equal(got, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])


def test_projection_masked_large_inputs_keep_frozen_mass(xp):
    v = np.array([1e20, 0.3, -1e20, 5.0])
    mask = np.array([True, False, True, True])
    got = jit(xp, tc.project_simplex)(asarray(xp, v), 0.0, total=0.7, mask=asarray(xp, mask))
    assert_close(got, [0.7, 0.3, 0.0, 0.0], xp=xp, atol=1e-15)


def test_projection_bad_arguments_name_them():
    with pytest.raises(ValueError, match=r"v must be a real floating array .* got dtype int"):
        tc.project_simplex(np.array([1, 0]))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast to v's shape"):
        tc.project_simplex(np.zeros(2), mask=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="total must be > 0 and finite, got inf"):
        tc.project_simplex(np.zeros(2), total=float("inf"))
    with pytest.raises(ValueError, match="floor must be >= 0, got nan"):
        tc.project_simplex(np.zeros(2), floor=float("nan"))


# eg_step misuse (issue 12, section 4): a Python lr is always checked; array values are checked
# when concrete (the default) and never under jit, where the transforms' guard takes over.


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), -float("inf")])
def test_eg_step_rejects_nonfinite_lr(xp, lr):
    with pytest.raises(ValueError, match=f"lr must be finite, got {lr}"):
        tc.eg_step(asarray(xp, [0.5, 0.5]), asarray(xp, [1.0, 0.0]), lr)


def test_eg_step_rejects_nonfinite_grad_and_array_lr(xp):
    alpha = asarray(xp, [0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match=r"grad has a non-finite value nan at flat index 1"):
        tc.eg_step(alpha, asarray(xp, [0.0, np.nan, 1.0]), 1.0)
    with pytest.raises(ValueError, match=r"grad has a non-finite value inf at flat index 2"):
        tc.eg_step(alpha, asarray(xp, [0.0, 0.0, np.inf]), 1.0)
    with pytest.raises(ValueError, match=r"lr has a non-finite value inf"):
        tc.eg_step(alpha, asarray(xp, [0.0, 0.0, 1.0]), asarray(xp, np.inf))
    with pytest.raises(ValueError, match=r"grad of shape \(2,\) does not broadcast to alpha's"):
        tc.eg_step(alpha, asarray(xp, [0.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match=r"mask of shape \(2,\) does not broadcast to alpha's"):
        tc.eg_step(alpha, asarray(xp, [0.0, 0.0, 1.0]), 1.0, mask=asarray(xp, [True, False]))


def test_eg_step_unchecked_nonfinite_grad_gives_nonfinite_result(xp):
    # the transforms' path: no value read (jit-safe); their guard rejects the NaN mixture
    alpha, grad = asarray(xp, [0.5, 0.5]), asarray(xp, [np.nan, 0.0])
    got = jit(xp, lambda a, g: tc.eg_step(a, g, 1.0, checked=False))(alpha, grad)
    assert not np.isfinite(to_numpy(got)).all()


def test_eg_step_under_jit_is_not_checked_and_checked_true_raises():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    alpha, grad = jnp.asarray([0.5, 0.5]), jnp.asarray([jnp.nan, 0.0])
    got = jax.jit(lambda a, g: tc.eg_step(a, g, 1.0))(alpha, grad)  # default: not read
    assert not np.isfinite(np.asarray(got)).all()
    with pytest.raises(ValueError, match="checked=True needs a concrete grad"):
        jax.jit(lambda a, g: tc.eg_step(a, g, 1.0, checked=True))(alpha, grad)


@pytest.mark.parametrize(
    "make, msg",
    [
        (lambda: tc.gradient_descent(float("inf")), "lr must be > 0 and finite, got inf"),
        (lambda: tc.exponentiated_gradient(float("nan")), "lr must be > 0 and finite, got nan"),
        (lambda: tc.simplex_projection(float("nan")), r"floor must be in \[0, 1\), got nan"),
        (lambda: tc.scale_by_rms(eps=float("nan")), "eps must be >= 0 and finite, got nan"),
    ],
)
def test_stage_factories_reject_nonfinite_hyperparameters(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()
