import numpy as np
import pytest
from reference import eg_reference, project_simplex_bisection, simplex_errors
from utils import asarray, assert_close, jit, name_of

import tandem_core as tc
from tandem_core._utils import to_numpy


def _state(transform, xp, m):
    return transform.init(m, xp=xp, dtype=xp.float64)


def _twin(xp, proxy, reference):
    ids = asarray(xp, np.arange(len(proxy)))
    m = len(proxy)
    return tc.TwinStats(
        tc.domain_stats(asarray(xp, proxy), ids, m), tc.domain_stats(asarray(xp, reference), ids, m)
    )


# One update of each transform, checked against numbers worked by hand / in float64 numpy.


def test_tandem_pgd_hand(xp):
    t = tc.tandem(eta_alpha=2.0, gamma=0.5)
    stats = _twin(xp, [2.0, 2.0, 2.0], [1.9, 2.0, 2.1])  # Delta = [-0.1, 0, 0.1]
    state = jit(xp, t.update)(_state(t, xp, 3), stats)
    # v = 1/3 - 2 * 0.5 * Delta = [0.4333, 0.3333, 0.2333] is already on the simplex
    assert_close(state.alpha, [1 / 3 + 0.1, 1 / 3, 1 / 3 - 0.1], xp=xp)
    assert int(to_numpy(state.count)) == 1
    assert_close(state.alpha_sum, [1 / 3 + 0.1, 1 / 3, 1 / 3 - 0.1], xp=xp)


def test_tandem_pgd_projection_clips(xp):
    t = tc.tandem(eta_alpha=5.0)
    delta = np.array([-0.1, 0.0, 0.1])
    state = t.update(_state(t, xp, 3), asarray(xp, delta))
    assert_close(
        state.alpha, project_simplex_bisection(np.full(3, 1 / 3) - 5.0 * delta), xp=xp, atol=1e-12
    )
    assert_close(state.alpha, [0.75, 0.25, 0.0], xp=xp, atol=1e-12)  # v=[5/6,1/3,-1/6], theta=1/12


def test_tandem_eg_hand(xp):
    t = tc.tandem(eta_alpha=3.0, gamma=2.0, step="eg")
    delta = np.array([0.1, -0.2, 0.05, 0.0])
    state = t.update(_state(t, xp, 4), asarray(xp, delta))
    assert_close(state.alpha, eg_reference(np.full(4, 0.25), 6.0 * delta, 1.0), xp=xp)


def test_tandem_eg_smoothing_and_floor(xp):
    t = tc.tandem(eta_alpha=50.0, step="eg", smoothing=0.1, floor=0.05)
    delta = np.array([0.2, -0.2, 0.0])
    state = t.update(_state(t, xp, 3), asarray(xp, delta))
    smoothed = 0.9 * eg_reference(np.full(3, 1 / 3), delta, 50.0) + 0.1 / 3
    assert_close(state.alpha, project_simplex_bisection(smoothed, floor=0.05), xp=xp, atol=1e-10)
    assert to_numpy(state.alpha).min() >= 0.05 - 1e-12


def test_tandem_pgd_floor(xp):
    t = tc.tandem(eta_alpha=100.0, floor=0.1)
    state = t.update(_state(t, xp, 4), asarray(xp, [1.0, 0.0, 0.0, -1.0]))
    assert_close(state.alpha, [0.1, 0.1, 0.1, 0.7], xp=xp, atol=1e-12)


def test_tandem_rms_normalisation_hand(xp):
    t = tc.tandem(eta_alpha=0.5, step="eg", normalize="rms", rms_decay=0.5)
    s = t.init(2, xp=xp, dtype=xp.float64)
    s = t.update(s, asarray(xp, [1e-4, -1e-4]))
    # centred g = [1e-4, -1e-4]; nu = 0.5 * mean(g^2) = 0.5e-8, bias-corrected 1e-8:
    # rms 1e-4, so g / rms = [1, -1]
    assert_close(
        s.alpha, eg_reference(np.full(2, 0.5), np.array([1.0, -1.0]), 0.5), xp=xp, rtol=1e-6
    )
    s = t.update(s, asarray(xp, [3e-4, 1e-4]))  # centred [1e-4, -1e-4] again: same relative step
    prev = eg_reference(np.full(2, 0.5), np.array([1.0, -1.0]), 0.5)
    assert_close(s.alpha, eg_reference(prev, np.array([1.0, -1.0]), 0.5), xp=xp, rtol=1e-6)


def test_tandem_gamma_scales_step():
    a = tc.tandem(eta_alpha=1.0, gamma=4.0)
    b = tc.tandem(eta_alpha=4.0, gamma=1.0)
    d = np.array([0.01, -0.02, 0.0])
    np.testing.assert_allclose(a.update(a.init(3), d).alpha, b.update(b.init(3), d).alpha)


def test_doremi_three_domains_by_hand(xp):
    # docs/methods.md, "DoReMi: Update": s_m = mean clipped excess; log a' = log a + eta s;
    # a = (1 - c) a' + c / M
    t = tc.doremi(eta=1.0, smoothing=1e-3)
    proxy = asarray(xp, [[2.0, 3.0], [1.0, 1.0], [4.0, 4.0]])
    ref = asarray(xp, [[1.5, 3.5], [2.0, 2.0], [3.0, 3.4]])
    stats = tc.excess_loss_stats(
        proxy, ref, asarray(xp, np.ones((3, 2))), asarray(xp, [0, 1, 2]), 3
    )
    state = jit(xp, t.update)(_state(t, xp, 3), stats)
    s = np.array([0.25, 0.0, 0.8])  # (0.5 + 0) / 2, 0, (1.0 + 0.6) / 2
    a = np.exp(s) / np.exp(s).sum()
    assert_close(state.alpha, 0.999 * a + 1e-3 / 3, xp=xp)
    # second step with domain 1 missing: it carries its last score (0.0)
    stats2 = tc.DomainStats(asarray(xp, [0.2, 0.0, 0.0]), asarray(xp, [1.0, 0.0, 1.0]))
    state = t.update(state, stats2)
    prev = 0.999 * a + 1e-3 / 3
    a2 = prev * np.exp([0.2, 0.0, 0.0])
    assert_close(state.alpha, 0.999 * a2 / a2.sum() + 1e-3 / 3, xp=xp)
    assert to_numpy(state.missing).tolist() == [0, 1, 0]
    assert_close(tc.mixture_summary(state).average, (prev + to_numpy(state.alpha)) / 2, xp=xp)


def test_doge_hand(xp):
    t = tc.doge(eta=0.5, smoothing=0.0, normalize="none")
    w = np.array([1.0, -1.0, 0.0])
    state = t.update(_state(t, xp, 3), asarray(xp, w))
    assert_close(state.alpha, eg_reference(np.full(3, 1 / 3), -w, 0.5), xp=xp)


def test_static_mixtures(xp):
    for t, want in [
        (tc.uniform(), [0.25] * 4),
        (tc.natural([1, 2, 3, 4]), [0.1, 0.2, 0.3, 0.4]),
        (tc.temperature([1, 4, 9, 16], t=2.0), [1 / 10, 2 / 10, 3 / 10, 4 / 10]),
    ]:
        state = t.update(_state(t, xp, 4), asarray(xp, np.ones(4)))
        assert_close(state.alpha, want, xp=xp)
        assert_close(tc.mixture_summary(state).average, want, xp=xp)
    with pytest.raises(ValueError, match="sizes has 2 domains but init got num_domains=3"):
        tc.natural([1, 2]).init(3)
    with pytest.raises(ValueError, match="positive"):
        tc.natural([1, 0])


TRANSFORMS = {
    "tandem_pgd": lambda: tc.tandem(eta_alpha=5.0),
    "tandem_eg": lambda: tc.tandem(eta_alpha=5.0, step="eg", smoothing=1e-3),
    "tandem_rms": lambda: tc.tandem(eta_alpha=0.3, step="eg", normalize="rms"),
    "tandem_skip": lambda: tc.tandem(eta_alpha=5.0, missing="skip"),
    "doremi": lambda: tc.doremi(),
    "doge": lambda: tc.doge(eta=2.0, normalize="none"),
    "doge_reference": lambda: tc.doge(eta=0.5, domain_clip=1.0),
    "uniform": lambda: tc.uniform(),
}


def _random_stats(name, xp, rng, m=6, b=10):
    ids = asarray(xp, rng.integers(0, m, size=b))
    make = lambda: tc.domain_stats(asarray(xp, rng.gamma(2.0, size=b)), ids, m)  # noqa: E731
    if name == "doge_reference":  # scores, gradient norms and the validation norm
        norms = rng.gamma(2.0, size=m)
        scores = rng.normal(size=m) * norms
        return tc.AlignmentStats(*(asarray(xp, x) for x in (scores, norms, np.array(1.5))))
    return tc.TwinStats(make(), make()) if name.startswith("tandem") else make()


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_invariants_over_many_updates(xp, rng, name):
    t = TRANSFORMS[name]()
    state = _state(t, xp, 6)
    update = jit(xp, t.update)
    for _ in range(15):
        state = update(state, _random_stats(name, xp, rng))
        a = to_numpy(state.alpha)
        assert a.min() >= 0.0 and abs(a.sum() - 1.0) < 1e-9 and np.isfinite(a).all()
    assert int(to_numpy(state.count)) == 15


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_equal_signals_keep_alpha_uniform(xp, name):
    t = TRANSFORMS[name]()
    m = 5
    equal = tc.domain_stats(asarray(xp, np.full(m, 2.5)), asarray(xp, np.arange(m)), m)
    stats = tc.TwinStats(equal, equal) if name.startswith("tandem") else equal
    if name == "doge_reference":
        full = asarray(xp, np.full(m, 2.5))
        stats = tc.AlignmentStats(full, full, asarray(xp, np.array(2.5)))
    state = _state(t, xp, m)
    for _ in range(3):
        state = t.update(state, stats)
    assert_close(state.alpha, np.full(m, 0.2), xp=xp, atol=1e-12)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_same_result_in_every_namespace(xp, rng, name):
    t = TRANSFORMS[name]()
    seed = int(rng.integers(1 << 30))
    ref_state, state = _state(t, np, 6), _state(t, xp, 6)
    for _ in range(4):
        r = np.random.default_rng(seed)
        ref_state = t.update(ref_state, _random_stats(name, np, r))
        r = np.random.default_rng(seed)
        state = t.update(state, _random_stats(name, xp, r))
        seed += 1
    assert_close(state.alpha, ref_state.alpha, xp=xp, rtol=1e-10)


def test_jax_jit_matches_eager_and_keeps_structure(rng):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    for name, make in TRANSFORMS.items():
        t = make()
        state = t.init(6, xp=jnp, dtype=jnp.float64)
        stats = _random_stats(name, jnp, rng)
        eager = t.update(state, stats)
        jitted = jax.jit(t.update)(state, stats)
        assert jax.tree_util.tree_structure(jitted) == jax.tree_util.tree_structure(state)
        np.testing.assert_allclose(np.asarray(jitted.alpha), np.asarray(eager.alpha), rtol=1e-12)


@pytest.mark.slow
def test_torch_compile_update_runs(rng):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xpt

    t = tc.tandem(eta_alpha=2.0, step="eg", normalize="rms", missing="skip")
    state = t.init(4, xp=xpt, dtype=torch.float32)
    compiled = torch.compile(t.update, fullgraph=True, dynamic=False)
    eager = state
    for _ in range(3):
        stats = _random_stats("tandem", xpt, rng, m=4)
        stats = type(stats)(*[type(s)(*[x.to(torch.float32) for x in s]) for s in stats])
        state = compiled(state, stats)
        eager = t.update(eager, stats)
    np.testing.assert_allclose(state.alpha.numpy(), eager.alpha.numpy(), rtol=1e-6)


def test_nonfinite_signal_skips_update_and_counts(xp):
    t = tc.tandem(eta_alpha=1.0)
    state = t.update(_state(t, xp, 3), asarray(xp, [0.1, 0.0, -0.1]))
    before = to_numpy(state.alpha).copy()
    for bad in ([np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0]):
        state = jit(xp, t.update)(state, asarray(xp, bad))
        np.testing.assert_allclose(to_numpy(state.alpha), before)
    assert int(to_numpy(state.skipped)) == 2 and int(to_numpy(state.count)) == 1


def test_skip_policy_freezes_missing_domain_weight(xp):
    t = tc.tandem(eta_alpha=3.0, missing="skip")
    state = t.update(_state(t, xp, 3), asarray(xp, [0.05, 0.0, -0.05]))
    w1 = float(to_numpy(state.alpha)[1])
    ids = asarray(xp, [0, 2])
    stats = tc.TwinStats(
        tc.domain_stats(asarray(xp, [1.0, 1.0]), ids, 3),
        tc.domain_stats(asarray(xp, [1.2, 0.9]), ids, 3),
    )
    state = t.update(state, stats)
    a = to_numpy(state.alpha)
    assert a[1] == pytest.approx(w1, abs=1e-15) and a.sum() == pytest.approx(1.0)
    assert a[2] > a[0]


def test_all_domains_missing_keeps_alpha(xp):
    for policy in ("carry", "zero", "skip"):
        t = tc.tandem(eta_alpha=1.0, missing=policy)
        state = _state(t, xp, 3)
        empty = tc.DomainStats(asarray(xp, np.zeros(3)), asarray(xp, np.zeros(3)))
        state = t.update(state, tc.TwinStats(empty, empty))
        assert_close(state.alpha, np.full(3, 1 / 3), xp=xp)
        assert to_numpy(state.missing).tolist() == [1, 1, 1]


def test_summary_trajectory_ring_buffer(xp):
    t = tc.tandem(eta_alpha=1.0, history=3)
    state = _state(t, xp, 2)
    alphas = []
    for k in range(5):
        state = t.update(state, asarray(xp, [0.01 * (k + 1), 0.0]))
        alphas.append(to_numpy(state.alpha).copy())
    summary = tc.mixture_summary(state)
    assert_close(summary.trajectory, np.stack(alphas[-3:]), xp=xp)
    assert_close(summary.average, np.mean(alphas, axis=0), xp=xp)
    assert_close(summary.last, alphas[-1], xp=xp)
    fresh = tc.mixture_summary(_state(t, xp, 2))
    assert fresh.trajectory.shape == (0, 2)
    assert_close(fresh.average, [0.5, 0.5], xp=xp)


def test_average_from_drops_the_burn_in(xp):
    t = tc.tandem(eta_alpha=1.0, average_from=2, history=8)
    state = _state(t, xp, 2)
    assert_close(tc.mixture_summary(state).average, [0.5, 0.5], xp=xp)
    alphas = []
    for k in range(5):
        state = jit(xp, t.update)(state, asarray(xp, [0.01 * (k + 1), 0.0]))
        alphas.append(to_numpy(state.alpha).copy())
        average = tc.mixture_summary(state).average
        # before the first averaged update the average is the current mixture
        want = np.mean(alphas[2:], axis=0) if k >= 2 else alphas[-1]
        assert_close(average, want, xp=xp)
    assert int(to_numpy(state.averaged)) == 3 and int(to_numpy(state.count)) == 5


def test_average_from_skipped_updates_are_not_averaged(xp):
    t = tc.tandem(eta_alpha=1.0, average_from=1)
    state = t.update(_state(t, xp, 2), asarray(xp, [0.1, 0.0]))
    state = t.update(state, asarray(xp, [np.nan, 0.0]))  # skipped: neither counted nor averaged
    assert int(to_numpy(state.averaged)) == 0 and int(to_numpy(state.count)) == 1
    state = t.update(state, asarray(xp, [0.1, 0.0]))
    assert_close(tc.mixture_summary(state).average, to_numpy(state.alpha), xp=xp)
    with pytest.raises(ValueError, match="average_from"):
        tc.tandem(average_from=-1)


def test_errors_are_clear():
    t = tc.tandem()
    with pytest.raises(ValueError, match="statistics cover 4 domains, the mixture has 3"):
        t.update(t.init(3), np.zeros(4))
    with pytest.raises(TypeError, match="tandem needs TwinStats"):
        t.update(t.init(2), tc.DomainStats(np.zeros(2), np.ones(2)))
    with pytest.raises(TypeError, match="doremi needs DomainStats"):
        d = tc.doremi()
        d.update(
            d.init(2),
            tc.TwinStats(
                tc.DomainStats(np.zeros(2), np.ones(2)), tc.DomainStats(np.zeros(2), np.ones(2))
            ),
        )
    for kwargs, msg in [
        ({"eta_alpha": 0.0}, "eta_alpha must be > 0"),
        ({"step": "adam"}, r"step='adam' is not supported; choose one of \('pgd', 'eg'\)"),
        ({"missing": "drop"}, "unknown missing-domain policy"),
        ({"smoothing": 1.0}, "smoothing must be in"),
        ({"normalize": "l2"}, "normalize='l2'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tc.tandem(**kwargs)
    with pytest.raises(ValueError, match="floor=0.5 is infeasible for M=3"):
        tc.tandem(floor=0.5).init(3)
    with pytest.raises(ValueError, match="num_domains must be >= 1"):
        tc.uniform().init(0)


def test_init_namespaces_and_dtypes(xp):
    state = tc.tandem().init(3, xp=xp)
    assert (
        name_of(xp) in type(state.alpha).__module__
        or name_of(xp) == "numpy"
        or name_of(xp) == "array_api_strict"
    )
    assert state.count.dtype == xp.int32
    assert state.seen.dtype == xp.bool


def test_chain_checks_state_length():
    step = tc.chain(tc.gradient_descent(0.1), tc.simplex_projection())
    with pytest.raises(ValueError, match="chain has 2 stages but the state has 1"):
        step.update(np.full(2, 0.5), np.zeros(2), (tc.stages.EmptyState(),))


def test_check_mixture_reports_broken_invariants():
    t = tc.tandem(floor=0.1)
    state = t.init(3)
    tc.check_mixture(state, floor=0.1)
    for bad, msg in [
        ([0.5, 0.6, -0.1], "min -0.1"),
        ([0.5, 0.6, 0.1], "sum 1.2"),
        ([np.nan, 0.5, 0.5], "non-finite"),
    ]:
        with pytest.raises(FloatingPointError, match=msg):
            tc.check_mixture(state._replace(alpha=np.array(bad)))


# The guard (issue 12, section 2): an update is applied only when its signal, mixture and stage
# state are finite and the mixture is on the simplex; otherwise the state is kept and counted.


@pytest.mark.parametrize("dtype, floor", [("float32", 0.0), ("float64", 0.0), ("float32", 0.05)])
def test_paper_update_with_diverging_delta_stays_on_simplex(xp, dtype, floor):
    t = tc.tandem(step="pgd", normalize="none", floor=floor)
    state = t.init(5, xp=xp, dtype=getattr(xp, dtype))
    update = jit(xp, t.update)
    rng = np.random.default_rng(1)
    for k in range(40):
        delta = rng.normal(size=5) * 1e9 * (1.0 + k)  # the twins diverge
        state = update(state, asarray(xp, delta.astype(dtype)))
        sum_err, below = simplex_errors(to_numpy(state.alpha), floor)
        assert sum_err <= (1e-6 if dtype == "float32" else 1e-12) and below <= 0.0
    assert int(to_numpy(state.skipped)) == 0  # the exact projection needs no rescue
    assert int(to_numpy(state.count)) == 40


def _stepper(stage_update):
    return tc.Stage(lambda alpha: tc.stages.EmptyState(), stage_update)


def _grad_signal(stats, *, xp, like):
    return stats, xp.ones(stats.shape, dtype=xp.bool)


@pytest.mark.parametrize(
    "name, step",
    [
        ("sum away from 1", lambda a, g: a - 0.1 * g),
        ("negative", lambda a, g: a + 0.3 * g),  # g sums to 0: on the plane, off the simplex
        ("below the floor", lambda a, g: a + 0.12 * g),  # floor 0.1: a weight goes to ~0.05
        ("a 1e-5 excess", lambda a, g: a * (1.0 + 1e-5)),
    ],
)
def test_guard_rejects_a_mixture_off_the_simplex(xp, name, step):
    stage = _stepper(lambda a, g, s, **kw: (step(a, g), g, s))
    t = tc.mixture_transform(_grad_signal, stage, floor=0.1)
    state = t.init(4, xp=xp, dtype=xp.float64)
    grad = [1.0, 1.0, 1.0, 1.0] if name == "sum away from 1" else [2.0, -2.0, 1.0, -1.0]
    new = jit(xp, t.update)(state, asarray(xp, grad))
    assert_close(new.alpha, np.full(4, 0.25), xp=xp)  # kept, never reported
    assert int(to_numpy(new.skipped)) == 1 and int(to_numpy(new.count)) == 0
    assert_close(new.alpha_sum, np.zeros(4), xp=xp)


@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
def test_guard_accepts_rounding_of_float32_steps(xp, smoothing):
    # the guard's tolerance is a few roundings per domain, and EG steps do not accumulate
    # rounding: a long float32 run is never skipped
    t = tc.tandem(eta_alpha=0.7, step="eg", smoothing=smoothing)
    state = t.init(64, xp=xp, dtype=xp.float32)
    update = jit(xp, t.update)
    rng = np.random.default_rng(2)
    for _ in range(300):
        state = update(state, asarray(xp, rng.normal(size=64).astype(np.float32)))
    assert int(to_numpy(state.skipped)) == 0 and int(to_numpy(state.count)) == 300


def test_guard_rejects_a_nonfinite_stage_state(xp):
    # float32 RMS of a 1e30 Delta overflows: nu = inf would freeze the mixture forever
    t = tc.tandem(eta_alpha=0.3, step="eg", normalize="rms")
    state = t.init(3, xp=xp, dtype=xp.float32)
    state = t.update(state, asarray(xp, np.array([0.1, 0.0, -0.1], np.float32)))
    with np.errstate(over="ignore", invalid="ignore"):  # numpy's overflow is the point here
        new = jit(xp, t.update)(state, asarray(xp, np.array([1e30, 0.0, -1e30], np.float32)))
    assert int(to_numpy(new.skipped)) == 1
    assert_close(new.inner[0].nu, to_numpy(state.inner[0].nu), xp=xp)
    assert_close(new.alpha, to_numpy(state.alpha), xp=xp)


# API misuse (issue 12, section 4): errors that name the argument, the value and what is expected.


def test_twin_stats_with_different_domain_counts_raise(xp):
    t = tc.tandem()
    three = tc.DomainStats(asarray(xp, np.ones(3)), asarray(xp, np.ones(3)))
    four = tc.DomainStats(asarray(xp, np.ones(4)), asarray(xp, np.ones(4)))
    state = t.init(3, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match=r"proxy covers 3 domains .* reference covers 4"):
        jit(xp, t.update)(state, tc.TwinStats(three, four))
    with pytest.raises(ValueError, match=r"statistics cover 4 domains, the mixture has 3"):
        t.update(state, tc.TwinStats(four, four))


def test_negative_counts_raise_when_checked(xp):
    d = tc.doremi()
    bad = tc.DomainStats(asarray(xp, [1.0, 2.0, 3.0]), asarray(xp, [1.0, -2.0, 1.0]))
    state = d.init(3, xp=xp, dtype=xp.float64)
    with pytest.raises(ValueError, match=r"counts has a negative value -2.0 at domain 1"):
        d.update(state, bad, checked=True)
    if name_of(xp) == "numpy":  # host arrays are checked by default: free
        with pytest.raises(ValueError, match="negative value"):
            d.update(state, bad)
    t = tc.tandem()
    good = tc.DomainStats(asarray(xp, [1.0, 2.0, 3.0]), asarray(xp, [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"reference.counts has a negative value -2.0"):
        t.update(t.init(3, xp=xp, dtype=xp.float64), tc.TwinStats(good, bad), checked=True)


def test_counts_are_not_read_under_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    d = tc.doremi()
    state = d.init(2, xp=jnp, dtype=jnp.float64)
    bad = tc.DomainStats(jnp.asarray([1.0, 2.0]), jnp.asarray([1.0, -1.0]))
    jax.jit(d.update)(state, bad)  # no sync, no error: shapes only
    with pytest.raises(ValueError, match="checked=True needs concrete statistics"):
        jax.jit(lambda s, x: d.update(s, x, checked=True))(state, bad)


@pytest.mark.parametrize(
    "call, error, msg",
    [
        (lambda: tc.tandem().init(2.5), TypeError, "num_domains must be an integer >= 1, got 2.5"),
        (lambda: tc.uniform().init(True), TypeError, "num_domains must be an integer"),
        (lambda: tc.uniform().init("3"), TypeError, "num_domains must be an integer"),
        (lambda: tc.uniform().init(np.int64(-1)), ValueError, "num_domains must be >= 1, got -1"),
        (lambda: tc.uniform().init(3, dtype=np.int32), ValueError, "must be a real floating"),
        (lambda: tc.tandem(history=-1), ValueError, "history must be >= 0, got -1"),
        (lambda: tc.tandem(history=2.5), TypeError, "history must be an integer >= 0"),
        (lambda: tc.tandem(eta_alpha=float("inf")), ValueError, "eta_alpha must be > 0 and fin"),
        (lambda: tc.tandem(gamma=float("nan")), ValueError, "gamma must be > 0 and finite"),
        (lambda: tc.tandem(step="eg", floor=float("nan")), ValueError, "floor must be in"),
        (lambda: tc.doremi(eta=float("inf")), ValueError, "eta must be > 0 and finite, got inf"),
        (lambda: tc.natural([1.0, float("inf")]), ValueError, "sizes must be a non-empty list"),
    ],
)
def test_misuse_raises_naming_the_argument(call, error, msg):
    with pytest.raises(error, match=msg):
        call()


def test_init_accepts_numpy_integers():
    assert tc.uniform().init(np.int64(3)).alpha.shape == (3,)


def test_statistics_from_another_library_than_the_state_raise_naming_both():
    torch = pytest.importorskip("torch")
    t = tc.tandem()
    stats = tc.DomainStats(torch.ones(3), torch.ones(3))
    with pytest.raises(TypeError, match=r"statistics are torch.Tensor .* state holds numpy"):
        t.update(t.init(3), tc.TwinStats(stats, stats))  # the default init is numpy
    numpy_stats = tc.DomainStats(np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match=r"numpy.ndarray arrays but the mixture state holds torch"):
        t.update(t.init(3, xp=torch), tc.TwinStats(numpy_stats, numpy_stats))
    state = t.update(t.init(3, xp=torch), tc.TwinStats(stats, stats))
    assert int(state.count) == 1
