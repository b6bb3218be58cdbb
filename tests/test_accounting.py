import numpy as np
import pytest
from reference import segment_sum_loop
from utils import asarray, assert_close, jit, name_of

import tandem_core as tc
from tandem_core._utils import to_numpy
from tandem_core.accounting import check_stats


def _batch(rng, b=40, m=5):
    return rng.normal(size=b) + 3.0, rng.integers(0, m, size=b)


def test_domain_stats_vs_python_loop(xp, rng):
    values, ids = _batch(rng)
    stats = tc.domain_stats(asarray(xp, values), asarray(xp, ids, dtype=xp.int32), 5)
    assert_close(stats.sums, segment_sum_loop(values, ids, 5), xp=xp)
    assert_close(stats.counts, np.bincount(ids, minlength=5).astype(float), xp=xp)
    assert_close(stats.invalid, 0.0, xp=xp)


def test_domain_stats_onehot_matches_numpy_path(rng):
    values, ids = _batch(rng)
    a = tc.domain_stats(values, ids, 5)
    b = tc.domain_stats(values, ids, 5, segment_sum=tc.segment_sum_onehot)
    np.testing.assert_allclose(a.sums, b.sums, rtol=1e-12)
    np.testing.assert_allclose(a.counts, b.counts)


def test_domain_stats_token_counts(xp):
    # token sums with token counts give per-token means
    stats = tc.domain_stats(
        asarray(xp, [6.0, 2.0, 3.0]), asarray(xp, [0, 0, 1]), 2, counts=asarray(xp, [3.0, 1.0, 2.0])
    )
    means, present = tc.domain_means(stats)
    assert_close(means, [2.0, 1.5], xp=xp)


def test_out_of_range_id_raises_naming_it(xp):
    with pytest.raises(ValueError, match=r"domain id 7 at position 2 is outside \[0, 3\)"):
        tc.domain_stats(asarray(xp, [1.0, 1.0, 1.0]), asarray(xp, [0, 1, 7]), 3)
    with pytest.raises(ValueError, match="domain id -1 at position 0"):
        tc.domain_stats(asarray(xp, [1.0, 1.0]), asarray(xp, [-1, 1]), 3)


def test_unchecked_drops_and_counts_invalid(xp):
    stats = tc.domain_stats(
        asarray(xp, [1.0, 2.0, 4.0, 8.0]), asarray(xp, [0, 9, 1, -2]), 2, checked=False
    )
    assert_close(stats.sums, [1.0, 4.0], xp=xp)
    assert_close(stats.counts, [1.0, 1.0], xp=xp)
    assert_close(stats.invalid, 2.0, xp=xp)


def test_under_jit_ids_are_not_read_and_invalid_counts():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    fn = jax.jit(lambda v, i: tc.domain_stats(v, i, 3))
    stats = fn(jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray([0, 5, 2]))
    np.testing.assert_allclose(np.asarray(stats.sums), [1.0, 0.0, 3.0])
    np.testing.assert_allclose(np.asarray(stats.invalid), 1.0)
    with pytest.raises(ValueError, match="checked=True needs concrete ids"):
        jax.jit(lambda v, i: tc.domain_stats(v, i, 3, checked=True))(
            jnp.ones(2), jnp.zeros(2, dtype=jnp.int32)
        )


def test_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"must both have shape \(B,\)"):
        tc.domain_stats(np.ones((2, 3)), np.zeros(2, dtype=int), 3)
    with pytest.raises(ValueError, match="must be integers"):
        tc.domain_stats(np.ones(2), np.zeros(2), 3)


def test_nan_loss_poisons_only_its_domain_with_native_segment_sum():
    stats = tc.domain_stats(np.array([1.0, np.nan, 2.0]), np.array([0, 1, 2]), 3)
    assert np.isnan(stats.sums[1]) and np.isfinite(stats.sums[[0, 2]]).all()


def test_merge_associative_commutative_and_pack_roundtrip(xp, rng):
    parts = []
    for _ in range(3):
        v, i = _batch(rng)
        parts.append(tc.domain_stats(asarray(xp, v), asarray(xp, i), 5))
    left = tc.merge_stats(tc.merge_stats(parts[0], parts[1]), parts[2])
    right = tc.merge_stats(parts[0], tc.merge_stats(parts[2], parts[1]))
    for a, b in zip(left, right):
        assert_close(a, to_numpy(b), xp=xp, rtol=1e-12)
    vec = tc.pack_stats(left)
    assert vec.shape == (11,)
    back = tc.unpack_stats(vec, 5)
    for a, b in zip(back, left):
        assert_close(a, to_numpy(b), xp=xp)
    twin = tc.TwinStats(parts[0], parts[1])
    tvec = tc.pack_stats(twin)
    assert tvec.shape == (22,)
    back = tc.unpack_stats(tvec, 5, twin=True)
    assert_close(back.reference.sums, to_numpy(parts[1].sums), xp=xp)


def test_merge_with_and_without_invalid():
    a = tc.DomainStats(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    b = tc.domain_stats(np.array([3.0]), np.array([1]), 2)
    merged = tc.merge_stats(a, b)
    np.testing.assert_allclose(merged.sums, [1.0, 5.0])
    assert float(merged.invalid) == 0.0
    assert tc.merge_stats(a, a).invalid is None
    np.testing.assert_allclose(tc.pack_stats(a), [1.0, 2.0, 1.0, 1.0, 0.0])


def test_all_reduce_is_one_collective_and_equals_concatenated_batch(rng):
    v, i = _batch(rng, b=60)
    calls = []

    def fake_all_reduce(vec):  # two "ranks" holding halves: the reduction sees both vectors
        calls.append(vec.shape)
        other = tc.pack_stats(tc.domain_stats(v[30:], i[30:], 5))
        return vec + other

    local = tc.domain_stats(v[:30], i[:30], 5)
    reduced = tc.all_reduce_stats(local, fake_all_reduce)
    whole = tc.domain_stats(v, i, 5)
    assert calls == [(11,)]
    np.testing.assert_allclose(reduced.sums, whole.sums, rtol=1e-12)
    np.testing.assert_allclose(reduced.counts, whole.counts)


def test_unpack_wrong_size():
    with pytest.raises(ValueError, match=r"have shape \(7,\)"):
        tc.unpack_stats(np.zeros(8), 3)


def test_twin_delta(xp):
    ids = asarray(xp, [0, 0, 1, 2])
    proxy = tc.domain_stats(asarray(xp, [2.0, 4.0, 1.0, 5.0]), ids, 4)
    ref = tc.domain_stats(asarray(xp, [1.0, 3.0, 1.5, 5.0]), ids, 4)
    delta, present = jit(xp, tc.twin_delta)(tc.TwinStats(proxy, ref))
    assert_close(delta, [-1.0, 0.5, 0.0, 0.0], xp=xp)
    assert to_numpy(present).tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    "policy, want, mask",
    [
        (
            "carry",
            [1.0, 7.0, 3.0, 2.0],
            None,
        ),  # domain 1 carried; domain 3 never seen -> mean of present (2.0)
        ("zero", [1.0, 0.0, 3.0, 0.0], None),
        ("skip", [1.0, 0.0, 3.0, 0.0], [True, False, True, False]),
    ],
)
def test_missing_policies(xp, policy, want, mask):
    signal = asarray(xp, [1.0, 99.0, 3.0, 99.0])
    present = asarray(xp, [True, False, True, False])
    last = asarray(xp, [0.0, 7.0, 0.0, 0.0])
    seen = asarray(xp, [True, True, False, False])
    filled, got_mask = tc.fill_missing(signal, present, last, seen, policy)
    assert_close(filled, want, xp=xp)
    assert (got_mask is None) == (mask is None)
    if mask is not None:
        assert to_numpy(got_mask).tolist() == mask


def test_unknown_missing_policy():
    with pytest.raises(ValueError, match="unknown missing-domain policy 'drop'"):
        tc.fill_missing(np.zeros(2), np.ones(2, bool), np.zeros(2), np.ones(2, bool), "drop")


def test_excess_loss_stats_by_hand(xp):
    proxy = asarray(xp, [[3.0, 1.0, 9.0], [2.0, 2.0, 2.0]])
    ref = asarray(xp, [[1.0, 2.0, 0.0], [1.5, 1.0, 5.0]])
    mask = asarray(xp, [[1, 1, 0], [1, 1, 1]])  # the 9.0 token is padding
    stats = tc.excess_loss_stats(proxy, ref, mask, asarray(xp, [1, 0]), 2)
    # sample 0: max(2,0)+max(-1,0) = 2 over 2 tokens; sample 1: 0.5+1+0 = 1.5 over 3 tokens
    assert_close(stats.sums, [1.5, 2.0], xp=xp)
    assert_close(stats.counts, [3.0, 2.0], xp=xp)


def test_backend_segment_sums_match_loop(rng):
    values, ids = _batch(rng)
    want = segment_sum_loop(values, ids, 5)
    for name in tc.available_backends():
        try:
            backend = tc.load_backend(name)
        except ImportError:
            continue
        xp = backend.xp
        stats = tc.domain_stats(
            xp.asarray(values), xp.asarray(ids), 5, segment_sum=backend.segment_sum
        )
        np.testing.assert_allclose(to_numpy(stats.sums), want, rtol=1e-5, err_msg=name_of(xp))


# Misuse of the statistics (issue 12, section 4): shapes are checked always (static, jit-safe),
# count values only when asked or free (host arrays), never under jit.


def test_check_stats_names_mismatched_shapes(xp):
    three = tc.DomainStats(asarray(xp, np.ones(3)), asarray(xp, np.ones(3)))
    four = tc.DomainStats(asarray(xp, np.ones(4)), asarray(xp, np.ones(4)))
    with pytest.raises(ValueError, match=r"proxy covers 3 domains \(shape \(3,\)\) but reference"):
        check_stats(tc.TwinStats(three, four))
    with pytest.raises(ValueError, match=r"proxy covers 4 domains .* reference covers 3"):
        jit(xp, tc.twin_delta)(tc.TwinStats(four, three))
    with pytest.raises(ValueError, match=r"sums \(3,\) and counts \(4,\)"):
        tc.domain_means(tc.DomainStats(three.sums, four.counts))
    with pytest.raises(ValueError, match="merge_stats: a covers 3 domains, b covers 4"):
        tc.merge_stats(three, four)
    with pytest.raises(ValueError, match="statistics cover 4 domains, the mixture has 3"):
        check_stats(four, 3)
    check_stats(asarray(xp, np.ones(3)), 3)  # arrays and None are the signal's business
    check_stats(None, 3)


def test_check_stats_negative_counts(xp):
    ok = tc.DomainStats(asarray(xp, [1.0, 2.0]), asarray(xp, [3.0, 0.0]))
    bad = tc.DomainStats(asarray(xp, [1.0, 2.0]), asarray(xp, [3.0, -0.5]))
    check_stats(ok, checked=True)
    with pytest.raises(ValueError, match=r"counts has a negative value -0.5 at domain 1"):
        check_stats(bad, checked=True)
    with pytest.raises(ValueError, match=r"proxy.counts has a negative value -0.5"):
        check_stats(tc.TwinStats(bad, ok))  # concrete: checked by default
    check_stats(bad, checked=False)


def test_check_stats_under_jit_reads_no_value():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    bad = tc.DomainStats(jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, -1.0]))
    jax.jit(lambda s: check_stats(s))(bad)
    with pytest.raises(ValueError, match="checked=True needs concrete statistics"):
        jax.jit(lambda s: check_stats(s, checked=True))(bad)
