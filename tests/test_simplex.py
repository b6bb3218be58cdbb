import numpy as np
import pytest
from reference import eg_reference, project_simplex_bisection, project_simplex_grid
from utils import asarray, assert_close, jit

import tandem_core as tc


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
