"""ADAPT (docs/methods.md): pooling, anchor centroid, gate, weighted loss, transform, BM25."""

import math

import numpy as np
import pytest
from utils import asarray, assert_close, jit

from tandem_core._utils import to_numpy
from tandem_core.adapt import (
    AdaptState,
    AnchorSum,
    adapt,
    adapt_scores,
    adapt_weights,
    anchor_centroid,
    anchor_sum,
    bm25_scores,
    centroid_from_sum,
    l2_normalize,
    merge_anchor_sums,
    pool_hidden,
    position_weights,
    standardize,
    weight_summary,
    weighted_loss,
)

SIG1 = 1.0 / (1.0 + math.exp(-1.0))  # 0.7310585786...


def random_batch(rng, b=5, t=7, h=4):
    hidden = rng.normal(size=(b, t, h))
    mask = rng.random((b, t)) < 0.6
    mask[0] = False  # an all-padding row
    mask[1] = True  # a full row
    mask[2, :3], mask[2, 3:] = False, True  # left padding
    return hidden, mask


def pool_loop(hidden, mask):
    """The paper's formula, one sequence at a time: valid tokens numbered 1..n."""
    out = np.zeros((hidden.shape[0], hidden.shape[2]))
    for row in range(hidden.shape[0]):
        valid = [t for t in range(hidden.shape[1]) if mask[row, t]]
        denom = sum(range(1, len(valid) + 1))
        for i, t in enumerate(valid, start=1):
            out[row] += i / denom * hidden[row, t]
    return out


def unit(v):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


# --- pooling -----------------------------------------------------------------------------------


def test_position_weights_by_hand(xp):
    mask = asarray(xp, np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool))
    want = [[1 / 6, 2 / 6, 3 / 6, 0], [0, 1 / 3, 2 / 3, 0], [0, 0, 0, 0]]
    got = jit(xp, position_weights, static_argnames="dtype")(mask, dtype=xp.float64)
    assert_close(got, want, xp=xp, atol=1e-15)
    absolute = position_weights(mask, dtype=xp.float64, counting="absolute")
    assert_close(absolute, [[1 / 6, 2 / 6, 3 / 6, 0], [0, 2 / 5, 3 / 5, 0], [0] * 4], xp=xp)


def test_position_weights_float_and_int_masks(xp):
    mask = np.array([[1, 0, 1, 1]])
    for dtype in (xp.float32, xp.int32):
        got = position_weights(asarray(xp, mask, dtype=dtype), dtype=xp.float64)
        assert_close(got, [[1 / 6, 0, 2 / 6, 3 / 6]], xp=xp)
    got = position_weights(asarray(xp, mask, dtype=xp.float32))
    assert got.dtype == xp.float32


def test_pool_hidden_matches_loop(xp, rng):
    for b, t, h in [(5, 7, 4), (6, 11, 3)]:
        hidden, mask = random_batch(rng, b, t, h)
        got = jit(xp, pool_hidden)(asarray(xp, hidden), asarray(xp, mask))
        assert_close(got, pool_loop(hidden, mask), xp=xp, atol=1e-12)
        assert not np.any(np.isnan(to_numpy(got)))
        assert np.all(to_numpy(got)[0] == 0.0)


def test_pool_hidden_no_mask_and_low_precision(xp, rng):
    hidden = rng.normal(size=(2, 300, 3))
    got = pool_hidden(asarray(xp, hidden))
    assert_close(got, pool_loop(hidden, np.ones((2, 300), bool)), xp=xp)
    # float32: positions up to 300 stay exact (counted in int32), weights sum to 1
    got32 = pool_hidden(asarray(xp, hidden, dtype=xp.float32))
    assert got32.dtype == xp.float32
    assert_close(got32, pool_loop(hidden, np.ones((2, 300), bool)), xp=xp, rtol=1e-4, atol=1e-6)


def test_l2_normalize(xp):
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-20, 0.0]])
    got = jit(xp, l2_normalize)(asarray(xp, x))
    assert_close(got, [[0.6, 0.8], [0.0, 0.0], [1e-8, 0.0]], xp=xp, atol=1e-15)


def test_l2_normalize_float16_no_overflow():
    x = np.array([[300.0, 400.0]], dtype=np.float16)  # 300**2 overflows float16
    got = l2_normalize(x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), [[0.6, 0.8]], rtol=1e-3)


# --- anchor centroid ---------------------------------------------------------------------------


def test_centroid_identity_mean_of_cosines(xp, rng):
    anchors = rng.normal(size=(9, 6)) + 0.5
    phi = rng.normal(size=(4, 6))
    mean_cos = np.array(
        [[p @ v / np.linalg.norm(p) / np.linalg.norm(v) for v in anchors] for p in phi]
    )
    c = anchor_centroid(asarray(xp, anchors))
    assert_close(c, unit(anchors).mean(0), xp=xp, atol=1e-15)
    got = jit(xp, adapt_scores)(asarray(xp, phi), c)
    assert_close(got, mean_cos.mean(1), xp=xp, rtol=0, atol=1e-12)


def test_streaming_centroid_equals_one_shot(xp, rng):
    anchors = rng.normal(size=(10, 5))
    one_shot = anchor_centroid(asarray(xp, anchors))
    # batches of 4 with the last one padded to 4 rows, masked out
    padded = np.concatenate([anchors, np.full((2, 5), 7.0)])
    keep = np.arange(12) < 10
    acc = AnchorSum(asarray(xp, np.zeros(5)), asarray(xp, np.zeros(())))
    for start in range(0, 12, 4):
        part = anchor_sum(
            asarray(xp, padded[start : start + 4]), asarray(xp, keep[start : start + 4])
        )
        acc = merge_anchor_sums(acc, part)
    assert_close(acc.count, 10.0, xp=xp)
    assert_close(centroid_from_sum(acc), to_numpy(one_shot), xp=xp, atol=1e-15)
    assert_close(centroid_from_sum(AnchorSum(acc.total * 0, acc.count * 0)), np.zeros(5), xp=xp)


# --- gate and loss -----------------------------------------------------------------------------


def test_gate_by_hand(xp):
    s = asarray(xp, np.array([-1.0, 0.0, 1.0, 0.3]))
    assert_close(adapt_weights(s), [1 - SIG1, 0.5, SIG1, 1 / (1 + math.exp(-0.3))], xp=xp)
    assert_close(
        jit(xp, adapt_weights, static_argnames="tau")(s, tau=0.5),
        1 / (1 + np.exp(-np.array([-2, 0, 2, 0.6]))),
        xp=xp,
    )
    sharp = to_numpy(adapt_weights(s, tau=0.01))
    np.testing.assert_allclose(sharp[[0, 2, 3]], [0.0, 1.0, 1.0], atol=1e-13)
    assert_close(adapt_weights(s, clip=0.6), [1 - SIG1, 0.5, 0.6, 1 / (1 + math.exp(-0.3))], xp=xp)
    # tau = 0: eps guard, s / 1e-8 is huge but neither NaN nor an overflow warning
    assert_close(adapt_weights(s, tau=0.0), [0.0, 0.5, 1.0, 1.0], xp=xp)
    shifted = 1 / (1 + np.exp(-np.array([-1.3, -0.3, 0.7, 0.0])))
    assert_close(adapt_weights(s, center=0.3), shifted, xp=xp)
    assert_close(adapt_weights(s, center=asarray(xp, 0.3))[3], 0.5, xp=xp)


def test_gate_tau_one_range(xp, rng):
    w = to_numpy(adapt_weights(asarray(xp, rng.uniform(-1, 1, size=100))))
    assert w.min() >= 1 - SIG1 and w.max() <= SIG1


def test_weighted_loss_by_hand(xp):
    loss, w = asarray(xp, np.array([1.0, 2.0, 3.0])), asarray(xp, np.array([0.5, 1.0, 0.0]))
    assert_close(jit(xp, weighted_loss)(loss, w), 2.5 / 3, xp=xp)
    assert_close(weighted_loss(loss, w, normalizer="sum"), 2.5 / 1.5, xp=xp)
    assert_close(weighted_loss(loss, w * 0, normalizer="sum"), 0.0, xp=xp)


def test_weight_summary_vs_numpy(xp, rng):
    w = rng.random(37)
    got = jit(xp, weight_summary)(asarray(xp, w))
    assert_close(got.mean, w.mean(), xp=xp)
    assert_close(got.quantiles, np.quantile(w, [0.1, 0.5, 0.9]), xp=xp)
    one = weight_summary(asarray(xp, np.array([0.25])), levels=(0.0, 1.0))
    assert_close(one.quantiles, [0.25, 0.25], xp=xp)


def test_standardize(xp):
    s = np.array([1.0, 2.0, 3.0, 6.0])
    got = standardize(asarray(xp, s))
    assert_close(got, (s - s.mean()) / s.std(), xp=xp)
    assert_close(standardize(asarray(xp, np.full(3, 4.0))), np.zeros(3), xp=xp)


# --- the transform -----------------------------------------------------------------------------


def test_transform_refresh_and_weights(xp, rng):
    hidden, mask = random_batch(rng, 4, 6, 5)
    anchors = rng.normal(size=(7, 5))
    t = adapt(tau=0.2, refresh_every=3, clip=0.9)
    state = t.init(5, xp=xp, dtype=xp.float64)
    assert state.count.dtype == xp.int32 and state.last_refresh.dtype == xp.int32
    h, m = asarray(xp, hidden), asarray(xp, mask)
    assert_close(t.weights(state, h, m), np.full(4, 0.5), xp=xp)
    assert [s for s in range(8) if t.needs_refresh(s)] == [0, 3, 6]
    state = t.refresh(state, asarray(xp, anchors), 3)
    assert_close(state.last_refresh, 3, xp=xp)
    assert_close(state.count, 1, xp=xp)
    scores = pool_loop(hidden, mask)
    scores = unit(scores) @ unit(anchors).mean(0)
    want = np.minimum(1 / (1 + np.exp(-scores / 0.2)), 0.9)
    assert_close(jit(xp, t.weights)(state, h, m), want, xp=xp, atol=1e-12)
    assert_close(t.scores(state, h, m), scores, xp=xp, atol=1e-12)
    # a centroid and a streamed AnchorSum give the same state
    by_centroid = t.update(state, anchor_centroid(asarray(xp, anchors)), 3)
    by_sum = t.refresh(state, anchor_sum(asarray(xp, anchors)), 3)
    for other in (by_centroid, by_sum):
        assert isinstance(other, AdaptState)
        assert_close(other.centroid, to_numpy(state.centroid), xp=xp, atol=1e-15)
    assert_close(by_sum.count, 2, xp=xp)


def test_transform_jit_state_roundtrip():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    t = adapt()
    state = t.init(3, xp=jnp)
    state = jax.jit(t.refresh)(state, jnp.eye(3)[:2], jnp.asarray(50))
    assert state.last_refresh.dtype == jnp.int32
    assert int(state.last_refresh) == 50
    np.testing.assert_allclose(np.asarray(state.centroid), [0.5, 0.5, 0.0])


def test_on_distribution_gets_higher_weight(rng):
    h, n = 16, 32
    direction = unit(rng.normal(size=h))
    anchor_hidden = direction + 0.3 * rng.normal(size=(20, 5, h))
    on = direction + 0.3 * rng.normal(size=(n, 5, h))
    off = rng.normal(size=(n, 5, h))
    mask = np.ones((20, 5), bool)
    t = adapt(tau=0.1)
    state = t.refresh(t.init(h), pool_hidden(anchor_hidden, mask), 0)
    w_on = t.weights(state, on)
    w_off = t.weights(state, off)
    assert w_on.min() > w_off.max()
    assert w_on.mean() > 0.9 and w_off.mean() < 0.75
    # global gate: a sample's weight does not depend on the rest of its batch
    np.testing.assert_array_equal(t.weights(state, on[:3]), w_on[:3])


@pytest.mark.slow
def test_torch_compile_weights(rng):
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xpt

    hidden, mask = random_batch(rng, 4, 6, 8)
    t = adapt(tau=0.3, clip=0.9)
    state = t.init(8, xp=xpt, dtype=torch.float32)
    anchors = torch.asarray(rng.normal(size=(5, 8)), dtype=torch.float32)
    h, m = torch.asarray(hidden, dtype=torch.float32), torch.asarray(mask)
    # fullgraph: no graph break; pytest turns dynamo's warnings (lru_cache tracing) into errors
    state = t.refresh(state, anchors, 0)
    w_c = torch.compile(t.weights, fullgraph=True, dynamic=False)(state, h, m)
    w = t.weights(state, h, m)
    np.testing.assert_allclose(w_c.numpy(), w.numpy(), rtol=1e-6)


@pytest.mark.cross
def test_torch_and_jax_agree(rng):
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    hidden, mask = random_batch(rng, 6, 9, 8)
    anchors = rng.normal(size=(5, 9, 8))
    anchor_mask = rng.random((5, 9)) < 0.8
    t = adapt(tau=0.3, clip=0.95)
    out = []
    for mod in (torch, jax.numpy):
        state = t.init(8, xp=mod, dtype=mod.float64)
        phi_v = pool_hidden(mod.asarray(anchors), mod.asarray(anchor_mask))
        state = t.refresh(state, phi_v, 0)
        out.append(to_numpy(t.weights(state, mod.asarray(hidden), mod.asarray(mask))))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-12)
    assert np.ptp(out[0]) > 0.05  # the weights are not trivially constant


# --- ADAPT-BM25 --------------------------------------------------------------------------------


def bm25_ref(query, collection, k1, b):
    """BM25(query, d) for every d of the collection: the textbook loop (Lucene IDF)."""
    n = len(collection)
    avgdl = sum(len(d) for d in collection) / n
    scores = []
    for d in collection:
        total = 0.0
        for q in query:
            df = sum(1 for other in collection if q in other)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            f = list(d).count(q)
            if f == 0:  # no contribution (and 0 / 0 for an empty document with b = 1)
                continue
            total += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(total)
    return scores


CORPUS = [[1, 2, 3, 2], [4, 5], [2, 2, 2, 9, 1, 7], [], [8], [3, 3, 1000003]]
ANCHORS = [[2, 3], [1, 2, 2, 5, 7], [6, 1000003]]


@pytest.mark.parametrize("k1, b", [(1.5, 0.75), (1.2, 0.0), (0.9, 1.0)])
def test_bm25_vs_reference(k1, b):
    got = bm25_scores(CORPUS, ANCHORS, k1=k1, b=b)
    want = [np.mean(bm25_ref(x, ANCHORS, k1, b)) for x in CORPUS]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got = bm25_scores(CORPUS, ANCHORS, k1=k1, b=b, query="anchor")
    want = np.mean([bm25_ref(v, CORPUS, k1, b) for v in ANCHORS], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.shape == (len(CORPUS),) and got.dtype == np.float64


def test_bm25_random_corpus_and_online_batches(rng):
    corpus = [rng.integers(0, 30, size=rng.integers(0, 12)) for _ in range(40)]
    anchors = [rng.integers(0, 40, size=rng.integers(1, 8)) for _ in range(6)]
    for query in ("train", "anchor"):
        got = bm25_scores(corpus, anchors, query=query)
        if query == "train":
            want = [np.mean(bm25_ref(list(x), anchors, 1.5, 0.75)) for x in corpus]
        else:
            want = np.mean([bm25_ref(list(v), corpus, 1.5, 0.75) for v in anchors], axis=0)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # query="train": the index is over the anchors only, so batches score like the whole set
    parts = [bm25_scores(corpus[i : i + 7], anchors) for i in range(0, 40, 7)]
    np.testing.assert_allclose(np.concatenate(parts), bm25_scores(corpus, anchors), rtol=1e-14)
    z = standardize(bm25_scores(corpus, anchors))
    np.testing.assert_allclose([z.mean(), z.std()], [0.0, 1.0], atol=1e-12)


def test_bm25_bad_input():
    with pytest.raises(ValueError, match="anchor_docs is empty"):
        bm25_scores(CORPUS, [])
    with pytest.raises(ValueError, match="unknown query role 'doc'"):
        bm25_scores(CORPUS, ANCHORS, query="doc")
    with pytest.raises(ValueError, match="non-negative"):
        bm25_scores([[1, -2]], ANCHORS)
    with pytest.raises(ValueError, match="0 <= b <= 1"):
        bm25_scores(CORPUS, ANCHORS, b=1.5)


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input_names_the_problem(xp):
    hidden = asarray(xp, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"hidden must have rank 3 \(B, T, H\)"):
        pool_hidden(asarray(xp, np.zeros((3, 4))), asarray(xp, np.ones((3, 4), bool)))
    with pytest.raises(ValueError, match=r"mask shape \(2, 4\) does not match hidden"):
        pool_hidden(hidden, asarray(xp, np.ones((2, 4), bool)))
    with pytest.raises(ValueError, match="mask must have rank 2"):
        position_weights(asarray(xp, np.ones(3, bool)))
    with pytest.raises(ValueError, match="unknown counting 'left'"):
        position_weights(asarray(xp, np.ones((1, 3), bool)), counting="left")
    with pytest.raises(ValueError, match="centroid has H=3"):
        adapt_scores(asarray(xp, np.ones((2, 4))), asarray(xp, np.ones(3)))
    s = asarray(xp, np.zeros(3))
    with pytest.raises(ValueError, match="tau must be >= 0"):
        adapt_weights(s, tau=-0.1)
    with pytest.raises(ValueError, match="clip must be > 0"):
        adapt_weights(s, clip=0.0)
    with pytest.raises(ValueError, match="unknown normalizer 'mean'"):
        weighted_loss(s, s, normalizer="mean")
    with pytest.raises(ValueError, match=r"weights shape \(2,\) != \(3,\)"):
        weighted_loss(s, s[:2])


def test_transform_bad_input():
    with pytest.raises(ValueError, match="tau must be >= 0"):
        adapt(tau=-1.0)
    with pytest.raises(ValueError, match="clip must be > 0"):
        adapt(clip=-0.5)
    with pytest.raises(ValueError, match="refresh_every must be an int >= 1"):
        adapt(refresh_every=0)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        adapt().init(0)
    t = adapt()
    with pytest.raises(ValueError, match=r"centroid of shape \(5,\), the state holds \(4,\)"):
        t.refresh(t.init(4), np.ones((3, 5)), 0)
