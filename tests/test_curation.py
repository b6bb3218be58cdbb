"""The curation suites (data.curation): deterministic, fast, and with the structure they claim."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from tandem_adapters.data import TokenSampler
from tandem_adapters.data.curation import make_pool_suite, make_task_suite


def bigram_loss(train, test, vocab_size) -> float:
    """Cross-entropy on ``test`` of an add-0.1 bigram model fit on ``train`` (nats/token)."""
    s = np.asarray(train, dtype=np.int64)
    counts = np.bincount(s[:-1] * vocab_size + s[1:], minlength=vocab_size**2) + 0.1
    probs = counts.reshape(vocab_size, vocab_size)
    probs = probs / probs.sum(axis=1, keepdims=True)
    t = np.asarray(test, dtype=np.int64)
    return float(-np.log(probs[t[:-1], t[1:]]).mean())


def streams(corpus) -> dict:
    return dict(zip(corpus.domains + corpus.val_domains, corpus.train + corpus.val))


def test_pool_is_deterministic_given_seed():
    a, b, c = make_pool_suite(seed=3), make_pool_suite(seed=3), make_pool_suite(seed=4)
    for x, y in zip(a.corpus.train + a.corpus.val, b.corpus.train + b.corpus.val):
        assert np.array_equal(x, y)
    assert np.array_equal(a.anchor, b.anchor) and not np.array_equal(a.anchor, c.anchor)
    assert not np.array_equal(a.corpus.val[0], c.corpus.val[0])
    assert a.corpus.known_answer == b.corpus.known_answer


def test_pool_labels_and_structure():
    pool = make_pool_suite(seed=0, tokens_per_source=20000)
    corpus, known = pool.corpus, pool.corpus.known_answer
    assert corpus.domains == ("target", "conflict", "offtopic", "noise")
    assert corpus.val_domains == ("target",) and corpus.vocab_size == 48
    assert known["in_distribution"] == ["target"] and known["in_share"] == 0.25
    assert set(known["off_target"]) == {"conflict", "offtopic", "noise"}
    assert all(s.dtype == np.uint16 and s.shape == (20000,) for s in corpus.train)
    d = streams(corpus)
    # vocabularies: the target and the conflicting chain share tokens 0-31; offtopic uses the
    # shared tokens 0-15 and topic B (32-47); noise all 48
    assert set(np.unique(d["target"])) == set(np.unique(d["conflict"])) == set(range(32))
    assert set(np.unique(d["offtopic"])) == set(range(16)) | set(range(32, 48))
    assert np.unique(d["noise"]).size == 48
    # the validation and anchor streams are the target chain: a bigram model of the target
    # source explains them near the entropy rate; the conflicting chain's does not
    entropy = known["target_entropy"]
    for held_out in (corpus.val[0], pool.anchor):
        own = bigram_loss(d["target"], held_out, 48)
        assert own < entropy + 0.35 and bigram_loss(d["conflict"], held_out, 48) > own + 1.0
    assert 0.3 < entropy < math.log(32)
    assert pool.anchor.shape == (2112,) and not np.array_equal(pool.anchor[:500], d["target"][:500])


def test_task_suite_structure():
    corpus = make_task_suite(seed=0, unit_tokens=2000)
    known = corpus.known_answer
    assert corpus.domains == ("a", "a_dup", "b", "c", "conflict", "noise")
    assert corpus.val_domains == ("target_a", "target_b", "target_c")
    assert [len(s) for s in corpus.train] == [8000, 8000, 2000, 4000, 4000, 8000]
    assert known["sizes"] == {"a": 4, "a_dup": 4, "b": 1, "c": 2, "conflict": 2, "noise": 4}
    assert known["redundant"] == [["a", "a_dup"]] and known["harmful"] == ["conflict", "noise"]
    assert math.isclose(sum(known["ideal"].values()), 1.0)
    d = streams(corpus)
    assert not np.array_equal(d["a"], d["a_dup"])  # independent samples of one chain
    # each target stream is best explained by its own chain; a and a_dup are the same chain
    for k in ("a", "b", "c"):
        own = bigram_loss(d[k], d[f"target_{k}"], 32)
        others = [bigram_loss(d[j], d[f"target_{k}"], 32) for j in ("a", "b", "c", "conflict")]
        assert own == min(others) and own < sorted(others)[1] - 0.5
    dup = bigram_loss(d["a_dup"], d["target_a"], 32)
    assert abs(dup - bigram_loss(d["a"], d["target_a"], 32)) < 0.05
    assert bigram_loss(d["a_dup"], d["target_a"], 32) < bigram_loss(d["b"], d["target_a"], 32) - 1
    counts = np.bincount(d["noise"], minlength=32) / len(d["noise"])
    assert -(counts * np.log(counts)).sum() > math.log(32) - 0.01  # i.i.d. uniform
    assert make_task_suite(seed=0, unit_tokens=2000).known_answer == known


def test_suites_feed_the_sampler_and_are_fast():
    start = time.perf_counter()
    pool, tasks = make_pool_suite(seed=1), make_task_suite(seed=1)
    assert time.perf_counter() - start < 1.0
    for corpus in (pool.corpus, tasks):
        batch = TokenSampler(corpus, 16, seed=0).train_batch(2)
        assert batch["tokens"].shape == (2 * corpus.num_domains, 16)
        assert batch["tokens"].max() < corpus.vocab_size


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_pool_suite(tokens_per_source=10), "tokens_per_source must be an integer"),
        (lambda: make_pool_suite(val_tokens=2.5), "val_tokens must be an integer"),
        (lambda: make_task_suite(unit_tokens=0), "unit_tokens must be an integer"),
    ],
)
def test_bad_sizes_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
