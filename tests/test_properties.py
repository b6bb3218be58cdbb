"""Property tests: every finite input keeps the mixture on the simplex (issue 12, sections 2, 4).

A seeded loop, not hypothesis (not a dependency). Inputs span 1e-30..1e30 in magnitude, both
signs, mixed in one vector, plus rows of one magnitude with tiny relative differences
(cancellation) and rows of ties. ``project_simplex`` runs as one ``(N, M)`` batch per shape;
the transforms loop over updates (their state is sequential), under ``jax.jit`` on JAX.
On the simplex means: ``|sum - 1| <= 1e-6`` in float32 (1e-12 in float64), measured in float64,
and every weight ``>= floor``.
"""

from __future__ import annotations

import numpy as np
import pytest
from method_checks import LR, SIZES
from reference import project_simplex_bisection, simplex_errors
from utils import asarray, jit, name_of

import tandem_core as tc
from tandem_core._utils import to_numpy
from tandem_core.methods import Signal, all_methods

SUM_TOL = {"float32": 1e-6, "float64": 1e-12}
PROJECTION_ROWS = {2: 2500, 3: 2500, 5: 2500, 16: 2500}  # 10,000 cases per dtype and floor
UPDATES = 1500  # per transform: 8 transforms, 12,000 update cases per namespace


def extreme(rng: np.random.Generator, rows: int, m: int) -> np.ndarray:
    """``(rows, m)`` finite values: mixed magnitudes 1e-30..1e30, clusters and ties."""
    x = rng.choice([-1.0, 1.0], size=(rows, m)) * 10.0 ** rng.uniform(-30, 30, size=(rows, m))
    k = rows // 3
    scale = rng.choice([-1.0, 1.0], size=(k, 1)) * 10.0 ** rng.uniform(-30, 30, size=(k, 1))
    spread = 10.0 ** rng.uniform(-9, 0, size=(k, 1)) * rng.normal(size=(k, m))
    x[:k] = scale * (1.0 + spread)  # one magnitude: the projection must not cancel it away
    x[k : k + k // 2] = x[k : k + k // 2, :1]  # ties
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("floor", [0.0, 0.02])
def test_projection_is_on_the_simplex_for_every_finite_input(xp, dtype, floor):
    rng = np.random.default_rng(12)
    project = jit(xp, tc.project_simplex, static_argnums=1)
    for m, rows in PROJECTION_ROWS.items():
        v = extreme(rng, rows, m).astype(dtype)
        assert np.isfinite(v).all()
        got = to_numpy(project(asarray(xp, v), floor))
        assert got.dtype == np.dtype(dtype) and got.shape == v.shape
        sum_err, below = simplex_errors(got, float(np.asarray(floor, dtype=dtype)))
        worst = int(np.argmax(sum_err))
        assert sum_err[worst] <= SUM_TOL[dtype], f"M={m}: {v[worst]} -> {got[worst]}"
        assert (below <= 0.0).all(), f"M={m}: {v[np.argmax(below)]} below floor {floor}"
        for i in rng.choice(rows, size=8, replace=False):  # and it is the projection
            want = project_simplex_bisection(v[i], floor=floor)
            np.testing.assert_allclose(got[i], want, atol=10 * SUM_TOL[dtype], err_msg=str(v[i]))


def _transforms():
    facts = dict(sizes=SIZES, lr=LR, num_domains=len(SIZES), updates=UPDATES)
    made = [(m.name, m.signal, m.build(m.make_params(), **facts)) for m in all_methods()]
    paper = tc.tandem(step="pgd", normalize="none", floor=0.02)  # the paper's update, floored
    raw = tc.doge(eta=1.0, normalize="none")  # DoGE's unnormalised form
    return made + [("tandem_paper_floor", Signal.TWIN, paper), ("doge_none", Signal.ALIGNMENT, raw)]


def _signals(signal: Signal, xp, m: int, rng: np.random.Generator, dtype: str):
    """``UPDATES`` statistics of the kind ``signal`` delivers, extreme values, some missing."""
    if signal is Signal.NONE:
        return [None] * UPDATES
    sums = [extreme(rng, UPDATES, m).astype(dtype) for _ in range(2)]
    counts = rng.integers(0, 4, size=(UPDATES, m)).astype(dtype)  # 0: the domain is missing
    if signal is Signal.ALIGNMENT:  # scores, gradient norms (>= 0), the validation norm
        return [
            tc.AlignmentStats(asarray(xp, s), asarray(xp, np.abs(n)), asarray(xp, np.abs(n[0])))
            for s, n in zip(*sums)
        ]

    def stats(k: int, i: int) -> tc.DomainStats:
        return tc.DomainStats(asarray(xp, sums[k][i]), asarray(xp, counts[i]))

    if signal is Signal.TWIN:
        return [tc.TwinStats(stats(0, i), stats(1, i)) for i in range(UPDATES)]
    return [stats(0, i) for i in range(UPDATES)]  # per-domain losses / excess losses / scores


@pytest.mark.parametrize("dtype", ["float32"])
def test_every_transform_keeps_the_simplex_for_every_finite_input(xp, dtype):
    rng = np.random.default_rng(4)
    m = len(SIZES)
    for name, signal, transform in _transforms():
        floor = 0.02 if name == "tandem_paper_floor" else 0.0
        state = transform.init(m, xp=xp, dtype=getattr(xp, dtype))
        update = jit(xp, transform.update)
        # float32 overflow inside a stage (e.g. the RMS of a 1e30 Delta) is the guard's business
        with np.errstate(over="ignore", invalid="ignore"):
            for i, stats in enumerate(_signals(signal, xp, m, rng, dtype)):
                state = update(state, stats)
                alpha = to_numpy(state.alpha)
                sum_err, below = simplex_errors(alpha, float(np.asarray(floor, dtype=dtype)))
                assert np.isfinite(alpha).all(), f"{name} update {i}: {alpha}"
                assert sum_err <= SUM_TOL[dtype], f"{name} update {i}: {alpha} ({name_of(xp)})"
                assert below <= 0.0, f"{name} update {i}: {alpha} below {floor}"
        count, skipped = int(to_numpy(state.count)), int(to_numpy(state.skipped))
        assert count + skipped == UPDATES, name
