"""TokenSampler: the tandem_core.BatchSampler contract over a DomainCorpus."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tandem_core as tc
from tandem_adapters.data import DomainCorpus, TokenSampler, from_arrays, load_folder

T = 8
BASES = (0, 1000, 2000)  # domain m's stream is BASES[m] + arange(n): each row shows its origin


def arithmetic_corpus(sizes=(500, 300, 200), val=None) -> DomainCorpus:
    train = {f"d{m}": BASES[m] + np.arange(n) for m, n in enumerate(sizes)}
    target = val or {
        "t0": 5000 + np.arange(100),
        "t1": 6000 + np.arange(50),
        "t2": 7000 + np.arange(30),
    }
    return from_arrays(train, target=target, vocab_size=8000)


def checked(batch, sampler, *, val: bool = False) -> dict:
    """Every batch passes tandem_core.check_batch and has the contract's dtypes."""
    num = len(sampler.val_domains if val else sampler.domains)
    out = tc.check_batch(batch, num_domains=num, vocab_size=sampler.vocab_size)
    for key in ("tokens", "labels", "domain"):
        assert batch[key].dtype == np.int32, key
    return out


def assert_windows(batch, bases) -> None:
    """Each row is a contiguous window of its domain's arithmetic stream, labels shifted by 1."""
    tokens, labels, domain = batch["tokens"], batch["labels"], batch["domain"]
    assert np.array_equal(labels[:, :-1], tokens[:, 1:])
    assert np.array_equal(labels, tokens + 1)  # w[1:] of a stream with step 1
    for row, m in zip(tokens, domain):
        assert np.array_equal(np.diff(row), np.ones(T - 1))
        assert bases[m] <= row[0] < bases[m] + 1000


def test_protocol_and_shapes():
    sampler = TokenSampler(arithmetic_corpus(), T, seed=0)
    assert isinstance(sampler, tc.BatchSampler)
    assert sampler.domains == ("d0", "d1", "d2") and sampler.val_domains == ("t0", "t1", "t2")
    assert (sampler.seq_len, sampler.vocab_size) == (T, 8000)
    assert sampler.domain_sizes() == [500, 300, 200]
    batch = checked(sampler.train_batch(4), sampler)
    assert batch["tokens"].shape == batch["labels"].shape == (12, T)
    assert batch["domain"].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # rows [m*b, (m+1)*b)
    assert_windows(batch, BASES)
    assert_windows(checked(sampler.eval_batch(3), sampler), BASES)
    assert_windows(checked(sampler.mixture_batch(np.array([0.2, 0.3, 0.5]), 20), sampler), BASES)
    val = checked(sampler.val_batch(6), sampler, val=True)
    assert_windows(val, (5000, 6000, 7000))


def test_mixture_frequencies_match_alpha():
    corpus = from_arrays({f"d{m}": np.arange(50) for m in range(4)}, vocab_size=50)
    alpha = np.array([0.5, 0.3, 0.2, 0.0])
    draws = TokenSampler(corpus, 2, seed=0).mixture_batch(alpha, 5000)["domain"]
    counts = np.bincount(draws, minlength=4)
    assert counts[3] == 0  # zero weight: never drawn
    expected = alpha[:3] * 5000
    chi2 = (((counts[:3] - expected) ** 2) / expected).sum()
    assert chi2 < 13.8, counts  # df=2, p=0.001 (the mean over seeds is ~2)
    assert np.all(np.abs(counts / 5000 - alpha) < 0.03)


@pytest.mark.parametrize(
    ("alpha", "match"),
    [
        ([0.5, 0.5], r"shape \(3,\)"),
        ([0.5, 0.7, -0.2], "non-negative"),
        ([0.5, 0.5, np.nan], "finite"),
        ([0.3, 0.3, 0.3], "sum to 1"),
    ],
)
def test_mixture_rejects_bad_alpha(alpha, match):
    sampler = TokenSampler(arithmetic_corpus(), T)
    with pytest.raises(ValueError, match=match):
        sampler.mixture_batch(np.array(alpha), 4)
    sampler.mixture_batch(np.array([0.5, 0.5, 1e-7]), 4)  # within 1e-6 of summing to 1


def test_rejects_bad_sizes():
    sampler = TokenSampler(arithmetic_corpus(), T)
    for call in (sampler.train_batch, sampler.eval_batch, sampler.val_batch):
        with pytest.raises(ValueError, match=">= 1"):
            call(0)
    with pytest.raises(ValueError, match="size"):
        sampler.mixture_batch([1 / 3] * 3, 0)
    with pytest.raises(ValueError, match="seq_len"):
        TokenSampler(arithmetic_corpus(), 0)
    with pytest.raises(ValueError, match="seed"):
        TokenSampler(arithmetic_corpus(), T, seed=-1)
    with pytest.raises(ValueError, match="no validation data"):
        TokenSampler(from_arrays({"a": np.arange(20)}), T).val_batch(2)


def test_val_batch_is_stratified_round_robin():
    sampler = TokenSampler(arithmetic_corpus(), T, seed=0)
    first = checked(sampler.val_batch(7), sampler, val=True)["domain"]
    assert first.tolist() == [0, 0, 0, 1, 1, 2, 2]  # 7 = 2 each + 1 extra for domain 0
    second = sampler.val_batch(7)["domain"]
    assert np.bincount(second, minlength=3).tolist() == [2, 3, 2]  # the extra row moves on
    total = np.bincount(np.concatenate([first, second, sampler.val_batch(7)["domain"]]))
    assert total.tolist() == [7, 7, 7]


def test_validation_sets_are_deterministic_and_cover_the_stream():
    corpus = arithmetic_corpus(val={"long": 5000 + np.arange(30), "short": 6000 + np.arange(5)})
    sampler = TokenSampler(corpus, T, seed=0)
    sets = sampler.validation_sets(max_per_domain=10)
    assert [s["tokens"].shape for s in sets] == [(4, T), (1, T)]
    for s in sets:
        checked(s, sampler, val=True)
    long = sets[0]
    assert long["domain"].tolist() == [0] * 4 and sets[1]["domain"].tolist() == [1]
    assert long["tokens"][:, 0].tolist() == [5000, 5008, 5016, 5024]  # stride T, no overlap
    scored = long["labels"][long["labels"] != tc.IGNORE_INDEX]
    assert sorted(scored.tolist()) == list(range(5001, 5030))  # every label exactly once
    assert [s["tokens"].shape[0] for s in sampler.validation_sets(2)] == [2, 1]
    sampler.train_batch(3), sampler.val_batch(5)  # RNG state and seed do not matter
    other = TokenSampler(corpus, T, seed=99).validation_sets(10)
    for a, b in zip(sets, other):
        for key in a:
            assert np.array_equal(a[key], b[key])


def test_short_stream_is_one_padded_row():
    corpus = from_arrays({"short": [3, 4, 5, 6, 7], "long": np.arange(100)}, vocab_size=100)
    sampler = TokenSampler(corpus, T, seed=0)
    batch = checked(sampler.train_batch(2), sampler)
    ignore = tc.IGNORE_INDEX
    for row in (0, 1):
        assert batch["tokens"][row].tolist() == [3, 4, 5, 6, 7, 0, 0, 0]  # w[:-1], w padded
        assert batch["labels"][row].tolist() == [4, 5, 6, 7, ignore, ignore, ignore, ignore]


def _draw_all(sampler) -> list:
    return [
        sampler.train_batch(2),
        sampler.mixture_batch(np.array([0.5, 0.25, 0.25]), 5),
        sampler.val_batch(4),
        sampler.eval_batch(1),
    ]


def _same(batches_a, batches_b) -> bool:
    return all(np.array_equal(a[k], b[k]) for a, b in zip(batches_a, batches_b) for k in a)


METHODS = {
    "train": lambda s: s.train_batch(2),
    "mixture": lambda s: s.mixture_batch([0.2, 0.3, 0.5], 9),
    "val": lambda s: s.val_batch(5),
    "eval": lambda s: s.eval_batch(3),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_streams_are_independent(method):
    quiet = TokenSampler(arithmetic_corpus(), T, seed=5)
    busy = TokenSampler(arithmetic_corpus(), T, seed=5)
    for name, call in METHODS.items():  # every other method, twice, moves only its own stream
        if name != method:
            call(busy), call(busy)
    busy.validation_sets(3)
    call = METHODS[method]
    assert _same([call(quiet), call(quiet)], [call(busy), call(busy)])
    fresh = TokenSampler(arithmetic_corpus(), T, seed=5)
    assert not _same([call(quiet)], [call(fresh)])  # ...while the stream itself does move


def test_resume_gives_identical_batches():
    corpus = arithmetic_corpus()
    run = TokenSampler(corpus, T, seed=11)
    for _ in range(2):  # 8 val rows: the round-robin cursor is mid-cycle (8 % 3 != 0)
        _draw_all(run)
    state = json.loads(json.dumps(run.state_dict()))  # JSON-serialisable
    resumed = TokenSampler(corpus, T, seed=0)  # a different seed: the state decides
    resumed.load_state_dict(state)
    assert _same(_draw_all(run) + _draw_all(run), _draw_all(resumed) + _draw_all(resumed))
    fresh = TokenSampler(corpus, T, seed=11)
    assert not _same(_draw_all(fresh), _draw_all(TokenSampler(corpus, T, seed=12)))


def test_load_state_dict_rejects_other_samplers():
    sampler = TokenSampler(arithmetic_corpus(), T)
    state = sampler.state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        TokenSampler(arithmetic_corpus(), T + 1).load_state_dict(state)
    other = from_arrays({"x": np.arange(50)}, target={"t0": np.arange(9)})
    with pytest.raises(ValueError, match="domains"):
        TokenSampler(other, T).load_state_dict(state)
    with pytest.raises(ValueError, match="TokenSampler state"):
        sampler.load_state_dict({"version": 99})
    broken = json.loads(json.dumps(state))
    broken["rngs"]["eval"] = {"bit_generator": "nope"}
    before = sampler.train_batch(1)
    with pytest.raises(ValueError, match="'eval'"):
        sampler.load_state_dict(broken)
    sampler.load_state_dict(state)  # a failed load left nothing half-applied; this works
    assert _same([sampler.train_batch(1)], [before])


SCRIPT = """
import hashlib, numpy as np
from tandem_adapters.data import TokenSampler, from_arrays
c = from_arrays({"a": np.arange(500), "b": 600 + np.arange(300)}, target=700 + np.arange(90))
s = TokenSampler(c, 8, seed=3)
h = hashlib.sha256()
for b in (s.train_batch(4), s.mixture_batch([0.3, 0.7], 9), s.val_batch(5), s.eval_batch(2)):
    for k in ("tokens", "labels", "domain"):
        h.update(b[k].tobytes())
print(h.hexdigest())
"""


def test_same_seed_same_batches_in_another_process():
    out = [
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
        for _ in range(2)
    ]
    assert all(o.returncode == 0 for o in out), out[0].stderr
    here = {}
    exec(SCRIPT.replace("print(h.hexdigest())", "result = h.hexdigest()"), here)
    assert out[0].stdout.strip() == out[1].stdout.strip() == here["result"]


def test_memory_mapped_streams(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(400, dtype=np.uint16))
    np.arange(1000, 1300, dtype=np.uint16).tofile(tmp_path / "b.bin")
    corpus = load_folder(tmp_path, val_fraction=0.1)
    assert all(isinstance(s, np.memmap) for s in corpus.train)
    sampler = TokenSampler(corpus, T, seed=0)
    assert_windows(checked(sampler.train_batch(5), sampler), (0, 1000))
    assert_windows(checked(sampler.val_batch(4), sampler, val=True), (0, 1000))
    assert sampler.domain_sizes() == [360, 270]
