"""TaskPGM (docs/methods.md): divergences, affinities, utilities, simplex solvers, greedy budget."""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from utils import asarray, assert_close, jit, name_of

from tandem_core import taskpgm as tp
from tandem_core.simplex import project_simplex

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- references


def jsd_reference(a, b, top_k=None):
    """Float64 JSD between softmax(a) and softmax(b) over the last axis (scipy.special)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if top_k is not None and top_k < a.shape[-1]:
        kth_a = -np.sort(-a, axis=-1)[..., top_k - 1 : top_k]
        kth_b = -np.sort(-b, axis=-1)[..., top_k - 1 : top_k]
        keep = (a >= kth_a) | (b >= kth_b)
        a, b = np.where(keep, a, -np.inf), np.where(keep, b, -np.inf)
    p, q = softmax(a, axis=-1), softmax(b, axis=-1)
    m = 0.5 * (p + q)
    return 0.5 * rel_entr(p, m).sum(-1) + 0.5 * rel_entr(q, m).sum(-1)


def pairwise_reference(logits, mask, top_k=None):
    """Token-mean pairwise JSD over masked positions, by explicit loops."""
    n = logits.shape[0]
    D = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        D[i, j] = D[j, i] = jsd_reference(logits[i], logits[j], top_k)[mask].mean()
    return D


def random_problem(rng, n):
    """Random symmetric S in [0, 1] (unit diagonal), standardised u, lam in {0.1, 0.5, 1, 2}."""
    S = rng.uniform(0.0, 1.0, (n, n))
    S = 0.5 * (S + S.T)
    np.fill_diagonal(S, 1.0)
    u = rng.normal(size=n) * rng.choice([0.3, 1.0, 3.0])
    return (u - u.mean()) / u.std(), S, float(rng.choice([0.1, 0.5, 1.0, 2.0]))


def quadratic(u, A, tau_e=0.0):
    """The energy E (plus tau_e * negative entropy) as a numpy function, for scipy."""
    return lambda p: float(tp.energy(p, u, A, tau_e=tau_e))


def slsqp(fun, n, p0=None, lower=0.0):
    cons = [{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones(n)}]
    x0 = np.full(n, 1.0 / n) if p0 is None else p0
    res = minimize(
        fun, x0, method="SLSQP", bounds=[(lower, 1.0)] * n, constraints=cons,
        options={"ftol": 1e-15, "maxiter": 1000},
    )  # fmt: skip
    return res.x


def drop_negatives_only(A, u):
    """Active-set phase 1 alone: closed form, drop negatives, re-solve (not always optimal)."""
    free = np.ones(len(u), bool)
    while True:
        idx = np.flatnonzero(free)
        sub = np.linalg.inv(A[np.ix_(idx, idx)])
        a, b = sub @ u[idx], sub @ np.ones(len(idx))
        q = a + (1 - a.sum()) / b.sum() * b
        if q.min() >= 0:
            p = np.zeros(len(u))
            p[idx] = q
            return p
        free[idx[q < 0]] = False


# ----------------------------------------------------------------------------- divergences


def test_jsd_matches_scipy_and_reference(xp, rng):
    a = rng.normal(size=(4, 6, 11)) * 3.0
    b = rng.normal(size=(4, 6, 11)) * 3.0
    want = jsd_reference(a, b)
    scipy_js = jensenshannon(softmax(a, -1), softmax(b, -1), base=math.e, axis=-1) ** 2
    np.testing.assert_allclose(want, scipy_js, rtol=1e-10, atol=1e-14)
    got = jit(xp, tp.jensen_shannon)(asarray(xp, a), asarray(xp, b))
    assert_close(got, want, xp=xp, atol=1e-12)


@pytest.mark.parametrize(
    "a, b, want",
    [
        ([0.0, -np.inf, -np.inf], [0.0, -np.inf, -np.inf], 0.0),  # identical one-hot
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.0),
        ([0.0, 0.0, -np.inf, -np.inf], [-np.inf, -np.inf, 0.0, 5.0], LN2),  # disjoint supports
        ([60.0, 0.0, 0.0], [0.0, 60.0, 0.0], None),  # near-one-hot: JSD just below ln 2
        ([30.0, 0.0, 0.0], [29.0, 0.0, 0.0], None),  # near-one-hot, nearly identical
    ],
)
def test_jsd_edge_cases(xp, a, b, want):
    got = jit(xp, tp.jensen_shannon)(asarray(xp, a), asarray(xp, b))
    ref = jsd_reference(a, b)
    if want is not None:
        np.testing.assert_allclose(ref, want, atol=1e-15)
    assert_close(got, ref, xp=xp, rtol=1e-7, atol=1e-15)
    assert 0.0 <= float(got) <= LN2


def test_jsd_float32_and_range(xp, rng):
    a = rng.normal(size=(5, 50)) * 10.0
    b = a.copy()
    b[:2] = rng.normal(size=(2, 50)) * 10.0
    got = tp.jensen_shannon(asarray(xp, a, xp.float32), asarray(xp, b, xp.float32))
    assert_close(got, jsd_reference(a, b), xp=xp, rtol=1e-4, atol=2e-6, dtype=xp.float32)


def test_jsd_axis_and_top_k(xp, rng):
    a = rng.normal(size=(3, 20, 4)) * 2.0
    b = rng.normal(size=(3, 20, 4)) * 2.0
    full = jsd_reference(np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1))
    assert_close(tp.jensen_shannon(asarray(xp, a), asarray(xp, b), axis=1), full, xp=xp)
    fn = jit(xp, tp.jensen_shannon, static_argnames=("top_k",))
    for k in (1, 3, 20, 50):
        want = jsd_reference(np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1), top_k=k)
        got = fn(asarray(xp, np.moveaxis(a, 1, -1)), asarray(xp, np.moveaxis(b, 1, -1)), top_k=k)
        assert_close(got, want, xp=xp, atol=1e-12)
    # top-k >= V is exactly the full JSD; identical inputs stay at 0
    assert_close(
        fn(asarray(xp, a[0]), asarray(xp, b[0]), top_k=4), jsd_reference(a[0], b[0]), xp=xp
    )
    assert_close(fn(asarray(xp, a[0]), asarray(xp, a[0]), top_k=2), np.zeros(20), xp=xp, atol=1e-15)


def test_pairwise_streaming_equals_concatenation(xp, rng):
    n, v = 3, 9
    batches = [rng.normal(size=(n, 2, 5, v)) * 2.0 for _ in range(3)]
    masks = [rng.random((2, 5)) < 0.6 for _ in range(3)]
    masks[1][0] = False  # a fully masked sequence
    update = jit(xp, tp.jsd_update, static_argnames=("top_k",))
    state = topk = tp.jsd_init(n, xp=xp)
    for logits, mask in zip(batches, masks):
        state = update(state, asarray(xp, logits), asarray(xp, mask))
        topk = update(topk, asarray(xp, logits), asarray(xp, mask), top_k=3)
    cat, cat_mask = np.concatenate(batches, axis=1), np.concatenate(masks, axis=0)
    want = pairwise_reference(cat, cat_mask)
    D = tp.jsd_result(state)
    assert_close(D, want, xp=xp, atol=1e-12)
    assert_close(state.count, cat_mask.sum(), xp=xp)
    got = np.asarray(D)
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_array_equal(np.diag(got), 0.0)
    # top-k inside the accumulator matches the reference's union-of-top-k definition
    assert_close(tp.jsd_result(topk), pairwise_reference(cat, cat_mask, 3), xp=xp, atol=1e-12)
    # numpy: one update over the concatenated batch gives the same matrix
    one = tp.jsd_update(tp.jsd_init(n), cat, cat_mask)
    np.testing.assert_allclose(tp.jsd_result(one), want, rtol=1e-12, atol=1e-15)


def test_pairwise_mask_respected(xp, rng):
    n, v = 3, 7
    logits = rng.normal(size=(n, 3, 4, v))
    mask = np.zeros((3, 4), bool)
    mask[0, :2] = mask[2, 3] = True
    garbage = logits.copy()
    fill = np.nan if name_of(xp) in ("torch", "jax") else 1e4  # numpy would warn on NaN
    garbage[:, ~mask] = fill * rng.normal(size=(n, (~mask).sum(), v))
    want = pairwise_reference(logits, mask)
    update = jit(xp, tp.jsd_update)
    for x, m in ((logits, mask), (garbage, mask), (logits, mask * 2.0)):
        # float token weights act like repeated tokens: the same mean
        state = update(tp.jsd_init(n, xp=xp), asarray(xp, x), asarray(xp, m))
        assert_close(tp.jsd_result(state), want, xp=xp, atol=1e-12)
    state = tp.jsd_update(tp.jsd_init(n), logits)  # no mask: every position counts
    np.testing.assert_allclose(
        tp.jsd_result(state), pairwise_reference(logits, np.ones((3, 4), bool))
    )


def test_pairwise_empty_is_nan_and_duplicates_zero(xp, rng):
    D = tp.jsd_result(tp.jsd_init(3, xp=xp))
    got = np.asarray(D)
    assert np.isnan(got[0, 1]) and np.all(np.diag(got) == 0.0)
    logits = rng.normal(size=(3, 2, 2, 5))
    logits[2] = logits[0]  # model 2 duplicates model 0
    state = tp.jsd_update(tp.jsd_init(3, xp=xp), asarray(xp, logits))
    D = np.asarray(tp.jsd_result(state))
    assert abs(D[0, 2]) < 1e-15 and D[0, 1] > 1e-3


def test_pairwise_single_model_and_bf16():
    torch = pytest.importorskip("torch")

    state = tp.jsd_update(tp.jsd_init(1), np.zeros((1, 2, 3)))
    assert tp.jsd_result(state).tolist() == [[0.0]]
    logits = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    state = tp.jsd_update(tp.jsd_init(2, xp=torch, dtype=torch.float32), logits)
    ref = pairwise_reference(logits.float().numpy(), np.ones(3, bool))
    assert state.sum.dtype == torch.float32
    np.testing.assert_allclose(tp.jsd_result(state).numpy(), ref, rtol=1e-5)


# ----------------------------------------------------------------------------- S and u


def test_affinity_maps(xp, rng):
    D = rng.uniform(0, LN2, (4, 4))
    D = 0.5 * (D + D.T)
    np.fill_diagonal(D, 0.0)
    linear = 1.0 - D / LN2
    assert_close(jit(xp, tp.affinity)(asarray(xp, D)), linear, xp=xp)
    assert_close(tp.affinity(asarray(xp, D), "exp", 0.2), np.exp(-D / 0.2), xp=xp)
    sigma = D.sum() / 12.0  # mean off-diagonal divergence
    assert_close(
        jit(xp, tp.affinity, static_argnums=1)(asarray(xp, D), "exp"), np.exp(-D / sigma), xp=xp
    )
    zeros = tp.affinity(asarray(xp, np.zeros((3, 3))), "exp")
    assert_close(zeros, np.ones((3, 3)), xp=xp)


def test_exp_affinity_of_mean_jsd_is_psd(rng):
    # documented in affinity(): the token-mean full-vocabulary JSD is conditionally negative
    # definite, so exp(-D / sigma) is PSD and default_mu is lam + margin
    logits = rng.normal(size=(7, 3, 4, 6)) * rng.uniform(0.2, 4.0, size=(7, 1, 1, 1))
    D = np.asarray(tp.jsd_result(tp.jsd_update(tp.jsd_init(7), logits)))
    for sigma in (0.01, 0.1, 1.0, None):
        S = tp.affinity(D, "exp", sigma)
        assert np.linalg.eigvalsh(S)[0] >= -1e-12
        assert tp.default_mu(S, 0.7) == pytest.approx(0.7 + 1e-3)


def test_pmi_affinity(xp):
    base = np.array([2.0, 2.0, 3.0])
    # cross[i, j]: loss of model i on task j. Self gains 1, 1, 0.5.
    cross = np.array([[1.0, 1.5, 3.5], [1.5, 1.0, 3.0], [2.5, 2.0, 2.5]])
    pmi = base[None, :] - cross
    sym = 0.5 * (pmi + pmi.T)  # [[1, .5, -.5], [.5, 1, .0], [-.5, .0, .5]]
    want = np.clip(sym / np.sqrt(np.outer(np.diag(sym), np.diag(sym))), 0, 1)
    np.fill_diagonal(want, 1.0)
    assert want[0, 1] == 0.5 and want[0, 2] == 0.0
    got = jit(xp, tp.pmi_affinity)(asarray(xp, cross), asarray(xp, base))
    assert_close(got, want, xp=xp)


def test_unary_utility(xp, rng):
    S = rng.uniform(size=(5, 5))
    val, base = rng.normal(size=5) + 3.0, rng.normal(size=5) + 3.5
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    cases = {
        "gain": z(base - val),
        "coverage": z(S.mean(1)),
        "mix": z(0.3 * z(base - val) + 0.7 * z(S.mean(1))),
    }
    fn = jit(xp, tp.unary_utility, static_argnames=("kind", "mix", "standardize"))
    for kind, want in cases.items():
        got = fn(
            kind, S=asarray(xp, S), val_loss=asarray(xp, val), base_loss=asarray(xp, base), mix=0.3
        )
        assert_close(got, want, xp=xp, atol=1e-12)
        np.testing.assert_allclose([np.mean(want), np.std(want)], [0.0, 1.0], atol=1e-12)
    raw = tp.unary_utility("gain", val_loss=asarray(xp, val), base_loss=2.0, standardize=False)
    assert_close(raw, 2.0 - val, xp=xp)
    flat = fn("coverage", S=asarray(xp, np.full((4, 4), 0.3)))  # std 0: zeros, not NaN
    assert_close(flat, np.zeros(4), xp=xp)


def test_group_gain_utility(xp, rng):
    """Per probe group, clipped at 0, averaged: the noise model's hedging is not rewarded."""
    base = np.array([3.4, 3.5, 3.3])  # (G,) base model per probe group
    val = np.array(  # (N, G): three specialists and a model that predicts nothing
        [[1.2, 5.0, 5.2], [5.1, 1.3, 4.9], [5.3, 5.0, 1.1], [3.45, 3.5, 3.3]]
    )
    want = np.maximum(base[None, :] - val, 0).mean(1)
    fn = jit(xp, tp.unary_utility, static_argnames=("kind", "standardize"))
    raw = fn(
        "group_gain", val_loss=asarray(xp, val), base_loss=asarray(xp, base), standardize=False
    )
    assert_close(raw, want, xp=xp, atol=1e-12)
    z = fn("group_gain", val_loss=asarray(xp, val), base_loss=asarray(xp, base))
    assert_close(z, (want - want.mean()) / want.std(), xp=xp, atol=1e-12)
    whole = tp.unary_utility("gain", val_loss=val.mean(1), base_loss=base.mean())
    assert np.argmax(whole) == 3 and np.argmin(np.asarray(raw)) == 3  # the defect it fixes
    one = rng.normal(size=4) + 3.0  # one group: max(gain, 0); a scalar base
    got = tp.unary_utility(
        "group_gain", val_loss=asarray(xp, one), base_loss=3.2, standardize=False
    )
    assert_close(got, np.maximum(3.2 - one, 0), xp=xp, atol=1e-12)
    with pytest.raises(ValueError, match=r"base_loss must be a scalar or have shape \(3,\)"):
        tp.unary_utility("group_gain", val_loss=val, base_loss=np.zeros(4))
    with pytest.raises(ValueError, match=r"val_loss must have shape \(N, G\) or \(N,\)"):
        tp.unary_utility("group_gain", val_loss=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="needs val_loss"):
        tp.unary_utility("group_gain")
    p = tp.taskpgm_mixture(
        D=np.full((4, 4), 0.3) * (1 - np.eye(4)), utility="group_gain", val_loss=val, base_loss=base
    )
    assert p.p[3] == 0.0 and abs(p.p[:3].sum() - 1) < 1e-12


def test_energy(xp, rng):
    u, S, lam = random_problem(rng, 4)
    A = tp.interaction_matrix(S, lam=lam)
    p = rng.dirichlet(np.ones(4), size=3)
    want = np.array([-u @ q + 0.5 * q @ A @ q for q in p])
    assert_close(jit(xp, tp.energy)(asarray(xp, p), asarray(xp, u), asarray(xp, A)), want, xp=xp)
    ent = want + 0.1 * np.sum(p * np.log(p), axis=1)
    assert_close(tp.energy(asarray(xp, p), asarray(xp, u), asarray(xp, A), tau_e=0.1), ent, xp=xp)
    # the energy is -u.p + lam/2 sum_{i!=j} S_ij p_i p_j + mu/2 sum p_i^2
    # (docs/methods.md, "TaskPGM: Steps", step 4)
    q = p[0]
    off = S - np.diag(np.diag(S))
    mu = tp.default_mu(S, lam)
    spec = -u @ q + lam / 2 * q @ off @ q + mu / 2 * q @ q
    np.testing.assert_allclose(want[0], spec, rtol=1e-12)


# ----------------------------------------------------------------------------- solvers


def test_default_mu_makes_A_positive_definite(rng):
    for n in (2, 5, 9):
        _, S, lam = random_problem(rng, n)
        mu = tp.default_mu(S, lam)
        lowest = np.linalg.eigvalsh(lam * (S - np.eye(n)))[0]
        assert mu == pytest.approx(max(lam, -lowest) + 1e-3)
        assert np.linalg.eigvalsh(tp.interaction_matrix(S, lam=lam))[0] >= 1e-3 - 1e-12


def test_solvers_vs_brute_force_grid_n3(rng):
    steps = 300
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    grid = np.stack([i[keep], j[keep], steps - i[keep] - j[keep]], axis=1) / steps
    for _ in range(6):
        u, S, lam = random_problem(rng, 3)
        A = tp.interaction_matrix(S, lam=lam)
        values = -grid @ u + 0.5 * np.einsum("ki,ij,kj->k", grid, A, grid)
        best = grid[np.argmin(values)]
        for method in ("active_set", "pgd"):
            p = tp.solve_mixture(u, S, lam=lam, method=method)
            e = -u @ p + 0.5 * p @ A @ p
            assert e <= values.min() + 1e-12, method
            np.testing.assert_allclose(p, best, atol=3.0 / steps)


@pytest.mark.parametrize("n", [5, 6, 8])
def test_solvers_vs_slsqp(rng, n):
    for _ in range(4):
        u, S, lam = random_problem(rng, n)
        A = tp.interaction_matrix(S, lam=lam)
        fun = quadratic(u, A)
        ref = slsqp(fun, n)
        exact = tp.solve_mixture(u, S, lam=lam)
        assert fun(exact) <= fun(ref) + 1e-10
        np.testing.assert_allclose(exact, ref, atol=1e-5)
        assert tp.kkt_residual(exact, u, A) < 1e-9
        grad = A @ exact - u  # KKT by hand: equal on the support, larger off it
        support = exact > 0
        np.testing.assert_allclose(grad[support], grad[support].mean(), atol=1e-9)
        assert np.all(grad[~support] >= grad[support].mean() - 1e-9)
        np.testing.assert_allclose(exact.sum(), 1.0, rtol=1e-14)
        projected = tp.solve_mixture(u, S, lam=lam, method="pgd")
        np.testing.assert_allclose(projected, exact, atol=1e-6)
        assert tp.kkt_residual(projected, u, A) < 1e-6


def test_mean_field_fixed_point_and_objective(rng):
    for n, tau in ((3, 0.1), (6, 0.3), (8, 0.05)):
        u, S, lam = random_problem(rng, n)
        A = tp.interaction_matrix(S, lam=lam)
        p = tp.solve_mixture(u, S, lam=lam, method="mean_field", tau_e=tau)
        z = (u - A @ p) / tau  # p_i ∝ exp((u_i - lam sum_{j != i} S_ij p_j - mu p_i)/tau)
        np.testing.assert_allclose(p, softmax(z), atol=1e-9)
        assert np.all(p > 0) and p.sum() == pytest.approx(1.0, abs=1e-14)
        fun = quadratic(u, A, tau)
        ref = slsqp(fun, n, lower=1e-15)
        assert fun(p) <= fun(ref) + 1e-9
        np.testing.assert_allclose(p, ref, atol=1e-4)
    # the documented mean-field exponent without ridge: mu = 0
    u, S, lam = random_problem(rng, 4)
    p = tp.solve_mixture(u, S, lam=lam, mu=0.0, method="mean_field", tau_e=0.5)
    off = S - np.eye(4)
    np.testing.assert_allclose(p, softmax((u - lam * off @ p) / 0.5), atol=1e-9)
    # small tau_e approaches the unregularised minimiser
    cold = tp.solve_mixture(u, S, lam=lam, method="mean_field", tau_e=1e-4)
    np.testing.assert_allclose(cold, tp.solve_mixture(u, S, lam=lam), atol=5e-3)


def test_active_set_drops_negative_coordinates():
    # S = I: A = mu I, unconstrained closed form p = u + 1/3 = [3.33, 0.33, -2.67]; then on
    # {0, 1}: [2, -1]; the answer is the vertex [1, 0, 0].
    u, S = np.array([3.0, 0.0, -3.0]), np.eye(3)
    A = tp.interaction_matrix(S, lam=1.0, mu=1.0)
    free = np.linalg.solve(A, u + 1.0 / 3.0)
    assert free.min() < 0 and free.sum() == pytest.approx(1.0)
    p = tp.solve_mixture(u, S, lam=1.0, mu=1.0)
    np.testing.assert_allclose(p, [1.0, 0.0, 0.0], atol=1e-15)
    assert tp.kkt_residual(p, u, A) < 1e-12


def test_active_set_readmits_wrongly_dropped_coordinates(rng):
    # Dropping all negatives at once is not always optimal: find such problems, check we are.
    found = 0
    while found < 3:
        u, S, lam = random_problem(rng, 6)
        A = tp.interaction_matrix(S, lam=lam)
        naive = drop_negatives_only(A, u)
        if tp.kkt_residual(naive, u, A) < 1e-6:
            continue
        found += 1
        p = tp.solve_mixture(u, S, lam=lam)
        assert tp.kkt_residual(p, u, A) < 1e-9
        fun = quadratic(u, A)
        assert fun(p) < fun(naive) - 1e-9
        np.testing.assert_allclose(p, slsqp(fun, 6), atol=1e-5)


def test_solve_mixture_accepts_any_namespace(xp, rng):
    u, S, lam = random_problem(rng, 5)
    p = tp.solve_mixture(asarray(xp, u), asarray(xp, S), lam=lam)
    assert isinstance(p, np.ndarray) and p.dtype == np.float64
    np.testing.assert_allclose(p, tp.solve_mixture(u, S, lam=lam))
    assert tp.solve_mixture(u[:1], S[:1, :1]).tolist() == [1.0]


def test_pgd_on_indefinite_A_returns_a_stationary_simplex_point(rng):
    u, S, _ = random_problem(rng, 5)
    A = tp.interaction_matrix(S, lam=1.0, mu=0.0)
    assert np.linalg.eigvalsh(A)[0] < 0
    p = tp.solve_mixture(u, S, lam=1.0, mu=0.0, method="pgd")
    assert p.min() >= 0 and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(project_simplex(p - 0.1 * (A @ p - u)), p, atol=1e-8)


def test_lam_zero_picks_best_task(rng):
    u = np.array([0.1, 2.0, -1.0, 1.9])
    S = rng.uniform(size=(4, 4))
    for method in ("active_set", "pgd"):
        np.testing.assert_allclose(tp.solve_mixture(u, S, lam=0.0, method=method), [0, 1, 0, 0])


# ----------------------------------------------------------------------------- greedy


def test_greedy_modular_is_top_k(rng):
    u = rng.normal(size=9)
    S = rng.uniform(size=(9, 9))
    for k in (1, 3, 9, 20):
        got = tp.greedy_subset(u, S, lam=0.0, k=k, stop_early=False)
        assert got == list(np.argsort(-u)[: min(k, 9)])
    # with early stopping the modular case keeps only positive utilities (at least one)
    assert tp.greedy_subset(u, S, lam=0.0, k=9) == [i for i in np.argsort(-u) if u[i] > 0]
    assert tp.greedy_subset(-np.abs(u), S, lam=0.0, k=3) == [int(np.argmax(-np.abs(u)))]


def test_greedy_redundancy_hand_case():
    u = np.array([1.0, 0.9, 0.5])
    S = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.1], [0.0, 0.1, 1.0]])
    # pick 0 (1.0); gains: 1 -> 0.9 - 0.8 = 0.1, 2 -> 0.5; pick 2; gain of 1 -> 0.9 - 0.9 = 0
    assert tp.greedy_subset(u, S, lam=1.0, k=2) == [0, 2]
    assert tp.greedy_subset(u, S, lam=1.0, k=3) == [0, 2]  # stops: gain 0 is no gain
    assert tp.greedy_subset(u, S, lam=1.0, k=3, stop_early=False) == [0, 2, 1]
    values = {
        A: sum(u[i] for i in A) - sum(S[i, j] for i, j in itertools.combinations(A, 2))
        for A in itertools.combinations(range(3), 2)
    }
    assert max(values, key=values.get) == (0, 2)  # greedy is optimal here (F = 1.5)


def test_subset_mixture():
    np.testing.assert_allclose(tp.subset_mixture([3, 0], 4), [0.5, 0, 0, 0.5])
    u = np.array([0.0, 5.0, np.log(3.0), 0.0])
    np.testing.assert_allclose(tp.subset_mixture([0, 2], 4, "utility", u), [0.25, 0, 0.75, 0])


# ----------------------------------------------------------------------------- end to end


def _duplicate_suite(rng):
    """Five tasks' predictive logits; task 4 duplicates task 1 exactly."""
    scale = np.array([1.0, 2.0, 1.5, 3.0, 1.0])[:, None, None, None]
    logits = rng.normal(size=(5, 4, 6, 12)) * scale
    logits[4] = logits[1]
    val_loss = np.array([2.0, 1.7, 1.9, 1.8, 1.7])
    mask = np.ones((4, 6), bool)
    mask[:, :2] = False  # prompt tokens
    return logits, mask, val_loss


@pytest.mark.parametrize("method", ["active_set", "pgd", "mean_field"])
def test_duplicates_share_weight(rng, method):
    logits, mask, val_loss = _duplicate_suite(rng)
    state = tp.jsd_update(tp.jsd_init(5), logits, mask)
    D = np.asarray(tp.jsd_result(state))
    assert D[1, 4] == 0.0
    kwargs = dict(lam=2.0, method=method, affinity_kind="exp", tau_e=0.05)
    S = tp.affinity(D, "exp")
    assert S[1, 4] == 1.0
    u = tp.unary_utility("gain", val_loss=val_loss, base_loss=2.1)
    both = tp.taskpgm_mixture(S=S, u=u, **kwargs).p
    keep = [0, 1, 2, 3]
    single = tp.taskpgm_mixture(S=S[np.ix_(keep, keep)], u=u[keep], **kwargs).p
    assert single[1] > 0.1
    np.testing.assert_allclose(both[1], both[4], rtol=1e-6)  # a symmetric split
    rtol = 0.05 if method == "mean_field" else 0.02  # entropy rewards the split by tau ln 2
    np.testing.assert_allclose(both[1] + both[4], single[1], rtol=rtol)
    assert both[1] < 0.6 * single[1]  # not both at full weight
    # the whole pipeline from D (utilities re-standardised): roughly half each
    full = tp.taskpgm_mixture(D, utility="gain", val_loss=val_loss, base_loss=2.1, **kwargs)
    alone = tp.taskpgm_mixture(
        D[np.ix_(keep, keep)], utility="gain", val_loss=val_loss[keep], base_loss=2.1, **kwargs
    )
    np.testing.assert_allclose(full.p[1] + full.p[4], alone.p[1], rtol=0.3)
    assert full.p[1] < 0.7 * alone.p[1]


def test_duplicates_greedy_picks_one(rng):
    logits, mask, val_loss = _duplicate_suite(rng)
    D = np.asarray(tp.jsd_result(tp.jsd_update(tp.jsd_init(5), logits, mask)))
    for k in (2, 3, 4):
        res = tp.taskpgm_mixture(
            D, utility="gain", val_loss=val_loss, k=k, lam=2.0, affinity_kind="exp"
        )
        chosen = set(res.subset.tolist())
        assert len(chosen) <= k and len(chosen & {1, 4}) <= 1
        assert chosen & {1, 4}  # the best task is in
        np.testing.assert_allclose(res.p.sum(), 1.0)
        assert set(np.flatnonzero(res.p)) == chosen


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises():
    S, u = np.eye(3), np.zeros(3)
    with pytest.raises(ValueError, match="square"):
        tp.solve_mixture(u, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"u must have shape \(3,\)"):
        tp.solve_mixture(np.zeros(4), S)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        tp.solve_mixture(u, S, lam=-0.5)
    with pytest.raises(ValueError, match="unknown method 'newton'.*active_set"):
        tp.solve_mixture(u, S, method="newton")
    with pytest.raises(ValueError, match="non-finite"):
        tp.solve_mixture(u, np.full((3, 3), np.nan))
    S2 = np.array([[1.0, 0.9], [0.9, 1.0]])
    with pytest.raises(ValueError, match="not positive definite.*mu > 0.9"):
        tp.solve_mixture(np.zeros(2), S2, lam=1.0, mu=0.5)
    with pytest.raises(ValueError, match="damping"):
        tp.solve_mixture(u, S, method="mean_field", damping=1.5)
    with pytest.raises(ValueError, match="tau_e"):
        tp.solve_mixture(u, S, method="mean_field", tau_e=0.0)
    with pytest.raises(ValueError, match="unknown affinity kind 'cos'"):
        tp.affinity(np.zeros((2, 2)), "cos")
    with pytest.raises(ValueError, match="sigma applies only"):
        tp.affinity(np.zeros((2, 2)), "linear", sigma=1.0)
    with pytest.raises(ValueError, match="D must be a square"):
        tp.affinity(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown utility kind"):
        tp.unary_utility("size", S=S)
    with pytest.raises(ValueError, match="needs val_loss"):
        tp.unary_utility("gain", S=S)
    with pytest.raises(ValueError, match="needs the affinity S"):
        tp.unary_utility("coverage", val_loss=u)
    with pytest.raises(ValueError, match="val_loss must have shape"):
        tp.unary_utility("mix", S=S, val_loss=np.zeros(4))
    with pytest.raises(ValueError, match="top_k"):
        tp.jensen_shannon(np.zeros(3), np.zeros(3), top_k=0)
    with pytest.raises(ValueError, match=r"logits must have shape \(N=3"):
        tp.jsd_update(tp.jsd_init(3), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="mask shape"):
        tp.jsd_update(tp.jsd_init(2), np.zeros((2, 4, 5)), np.ones(5, bool))
    with pytest.raises(ValueError, match="n \\(number of models\\)"):
        tp.jsd_init(0)
    with pytest.raises(ValueError, match="budget k"):
        tp.greedy_subset(u, S, k=0)
    with pytest.raises(ValueError, match="distinct"):
        tp.subset_mixture([1, 1], 3)
    with pytest.raises(ValueError, match=r"unknown weights 'size'.*uniform"):
        tp.subset_mixture([1], 3, "size")
    with pytest.raises(ValueError, match="exactly one of D"):
        tp.taskpgm_mixture(S=S, D=S)
    with pytest.raises(ValueError, match=r"base_loss must have shape \(2,\)"):
        tp.pmi_affinity(np.zeros((2, 2)), np.zeros(3))
