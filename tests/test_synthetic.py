"""Synthetic suites: deterministic, fast, and with the planted structure they claim."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import tandem_core as tc
from tandem_adapters.data import DomainCorpus, TokenSampler, available_suites, make_suite

V = 32


def unigram_entropy(stream, vocab_size=V) -> float:
    p = np.bincount(np.asarray(stream), minlength=vocab_size) / len(stream)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def bigram_model_loss(train, test, vocab_size=V) -> float:
    """Cross-entropy on ``test`` of an add-0.1 bigram model fit on ``train`` (nats/token)."""
    s = np.asarray(train, dtype=np.int64)
    counts = np.bincount(s[:-1] * vocab_size + s[1:], minlength=vocab_size**2) + 0.1
    probs = counts.reshape(vocab_size, vocab_size)
    probs = probs / probs.sum(axis=1, keepdims=True)
    t = np.asarray(test, dtype=np.int64)
    return float(-np.log(probs[t[:-1], t[1:]]).mean())


def unique_windows(stream, k=16) -> int:
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(stream), k)
    return len(np.unique(windows, axis=0))


def by_name(corpus: DomainCorpus) -> dict:
    return dict(zip(corpus.domains, corpus.train))


def test_registry():
    assert set(available_suites()) >= {"planted", "restricted"}
    with pytest.raises(ValueError, match="unknown suite 'nope'.*planted"):
        make_suite("nope")
    with pytest.raises(ValueError, match="val must be one of"):
        make_suite(val="sometimes")
    with pytest.raises(ValueError, match="vocab_size"):
        make_suite(vocab_size=4)


@pytest.mark.parametrize("name", ["planted", "restricted"])
def test_deterministic_given_seed(name):
    a, b, c = make_suite(name, seed=1), make_suite(name, seed=1), make_suite(name, seed=2)
    assert a.domains == b.domains and a.val_domains == b.val_domains == ("target",)
    for x, y in zip(a.train + a.val, b.train + b.val):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.val[0], c.val[0])
    assert a.known_answer == b.known_answer


@pytest.mark.parametrize("name", ["planted", "restricted"])
def test_fast(name):
    best = min(_timed(name) for _ in range(3))
    assert best < 0.5, f"make_suite({name!r}) took {best:.3f} s"


def _timed(name) -> float:
    start = time.perf_counter()
    make_suite(name, seed=0)
    return time.perf_counter() - start


def test_planted_structure():
    corpus = make_suite("planted", seed=0, vocab_size=V)
    assert corpus.domains == ("easy", "noise", "related", "restricted", "target_like")
    assert corpus.vocab_size == V and not corpus.per_domain_validation
    assert all(s.shape == (20000,) and s.max() < V for s in corpus.train)
    d = by_name(corpus)
    # noise: i.i.d. uniform, so its unigram entropy is ~log V
    assert abs(unigram_entropy(d["noise"]) - math.log(V)) < 0.01
    # easy: a short repeated pattern
    assert unique_windows(d["easy"], 8) <= 8
    # restricted: a few target sequences repeated; target_like: fresh samples
    assert unique_windows(d["restricted"]) <= 256 < 10000 < unique_windows(d["target_like"])
    answer = corpus.known_answer
    assert answer["target"] == "target_like" and answer["noise"] == "noise"
    assert set(answer["down"]) == {"noise", "easy"}
    assert set(answer["up"] + answer["down"] + answer["neutral"]) == set(corpus.domains)
    assert answer["target_entropy"] < answer["uniform_entropy"] == pytest.approx(math.log(V))


def test_planted_domains_share_the_target_chain():
    """The known answer holds for a bigram model: target_like < related < noise on the target."""
    for seed in range(3):
        corpus = make_suite("planted", seed=seed)
        d, target = by_name(corpus), corpus.val[0]
        loss = {name: bigram_model_loss(stream, target) for name, stream in d.items()}
        floor = corpus.known_answer["target_entropy"]
        assert floor < loss["target_like"] < floor + 0.2  # same chain: near the entropy rate
        assert loss["target_like"] < loss["related"] < loss["noise"] - 1.0
        assert loss["restricted"] < loss["noise"] - 1.0
        assert loss["noise"] == pytest.approx(math.log(V), abs=0.1)
        assert loss["easy"] > loss["noise"]  # learnable, but the wrong thing to learn


def test_restricted_suite():
    corpus = make_suite("restricted", seed=0, tokens_per_domain=16000)
    assert corpus.domains == ("easy", "noise", "related", "restricted")
    sizes = dict(zip(corpus.domains, TokenSampler(corpus, 16).domain_sizes()))
    assert sizes["restricted"] == 2000 and sizes["related"] == 16000  # small target-like domain
    d = by_name(corpus)
    assert unique_windows(d["restricted"]) <= 256  # repeated ~8 times
    assert corpus.known_answer["target"] == "restricted"
    target = corpus.val[0]
    assert bigram_model_loss(d["restricted"], target) < bigram_model_loss(d["noise"], target) - 1


def test_per_domain_validation_variant():
    corpus = make_suite("planted", seed=0, val="per_domain", val_tokens=3000)
    assert corpus.per_domain_validation and corpus.val_domains == corpus.domains
    assert all(v.shape == (3000,) for v in corpus.val)
    d, val = by_name(corpus), dict(zip(corpus.val_domains, corpus.val))
    assert not np.array_equal(val["noise"][:100], d["noise"][:100])  # fresh samples
    assert abs(unigram_entropy(val["noise"]) - math.log(V)) < 0.02
    # the training streams do not depend on the validation mode
    target_mode = make_suite("planted", seed=0)
    for x, y in zip(corpus.train, target_mode.train):
        assert np.array_equal(x, y)


def test_suite_feeds_the_sampler():
    corpus = make_suite("planted", seed=0)
    sampler = TokenSampler(corpus, 32, seed=0)
    m = len(corpus.domains)
    for batch in (sampler.train_batch(2), sampler.mixture_batch(np.full(m, 1 / m), 8)):
        tc.check_batch(batch, num_domains=m, vocab_size=V)
    for batch in [sampler.val_batch(4), *sampler.validation_sets(4)]:
        tc.check_batch(batch, num_domains=1, vocab_size=V)


def test_realtext_suite_reads_the_machines_text():
    corpus = make_suite("realtext", seed=0, tokens_per_domain=40_000)
    assert corpus.domains == ("code", "docs", "gui", "licenses", "noise")
    assert corpus.vocab_size == 257 and corpus.val_domains == ("target",)
    assert all(s.shape == (40_000,) and int(s.max()) < 257 for s in corpus.train)
    assert corpus.val[0].shape == (10_000,)
    d, target = by_name(corpus), corpus.val[0]
    assert b"def " in d["code"][:20_000].astype(np.uint8).tobytes()  # real Python source
    assert abs(unigram_entropy(d["noise"], 256) - math.log(256)) < 0.02
    answer = corpus.known_answer
    assert answer["noise"] == "noise" and set(answer["up"]) == {"code", "docs"}
    assert set(answer["up"] + answer["down"] + answer["neutral"]) == set(corpus.domains)
    # the known answer holds for a byte-bigram model: the up domains predict the target best
    loss = {name: bigram_model_loss(stream, target, 257) for name, stream in d.items()}
    assert max(loss[u] for u in answer["up"]) < min(loss["licenses"], loss["noise"])
    assert loss["noise"] > loss["licenses"] + 0.5


def test_realtext_suite_is_deterministic_and_holds_its_validation_out():
    a, b = make_suite("realtext", seed=1), make_suite("realtext", seed=1)
    c = make_suite("realtext", seed=2)
    for x, y in zip(a.train + a.val, b.train + b.val):
        assert np.array_equal(x, y)
    text = [i for i, name in enumerate(a.domains) if name != "noise"]
    assert all(np.array_equal(a.train[i], c.train[i]) for i in text)  # the seed draws the noise
    assert not np.array_equal(a.train[a.domains.index("noise")], c.train[c.domains.index("noise")])
    per = make_suite("realtext", seed=1, val="per_domain", tokens_per_domain=20_000)
    assert per.val_domains == per.domains
    for train, held in zip(per.train, per.val):  # the tail of each domain's text, not trained on
        assert held.shape == (5_000,)
        assert not np.array_equal(train[-5_000:], held)
