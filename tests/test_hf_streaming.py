"""Hugging Face datasets: ``load_hf_dataset`` through the token cache, streamed domains, resume."""

import json
import os
import signal

import numpy as np
import pytest
from utils import a_backend, set_args, small_job

from tandem_adapters import fingerprint as fp
from tandem_adapters.cli import main
from tandem_adapters.config import ConfigError, DataConfig
from tandem_adapters.data import TokenSampler, load_hf_dataset
from tandem_adapters.data.hf import stream_hf_dataset
from tandem_adapters.data.streamed import StreamedDomain

datasets = pytest.importorskip("datasets")

EOS = 256
LETTERS = {"a": "a", "b": "b", "c": "c"}  # each domain's documents use one letter only


def _save(path, docs_per_domain=40, seed=0):
    """A saved dataset: ``docs_per_domain`` one-letter documents per domain, interleaved."""
    rng = np.random.default_rng(seed)
    rows = {"text": [], "domain": []}
    for _ in range(docs_per_domain):
        for name, letter in LETTERS.items():
            rows["text"].append(letter * int(rng.integers(3, 40)))
            rows["domain"].append(name)
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    return path


def _batches(corpus, n=4, seed=0):
    sampler = TokenSampler(corpus, seq_len=8, seed=seed)
    return [sampler.train_batch(per_domain=3)["tokens"] for _ in range(n)]


def test_load_hf_dataset_tokenizes_once_then_reads_the_cache(tmp_path, count_encode):
    data = _save(tmp_path / "ds")
    first = load_hf_dataset(data, domain_field="domain", cache_dir=tmp_path / "cache")
    assert count_encode[0] == 120
    count_encode[0] = 0
    second = load_hf_dataset(data, domain_field="domain", cache_dir=tmp_path / "cache")
    assert count_encode[0] == 0
    assert all(isinstance(s, np.memmap) for s in second.train)
    assert second.domains == first.domains == ("a", "b", "c")
    assert second.vocab_size == first.vocab_size == 257
    plain = load_hf_dataset(data, domain_field="domain")  # the same tokens as without a cache
    for a, b, c in zip(_batches(first), _batches(second), _batches(plain)):
        assert np.array_equal(a, b) and np.array_equal(b, c)
    other = load_hf_dataset(data, domain_field="text", cache_dir=tmp_path / "cache")
    assert count_encode[0] > 0 and len(other.domains) > 3  # the domain field is in the key


def test_a_changed_dataset_is_tokenized_again(tmp_path, count_encode):
    cache = tmp_path / "cache"
    load_hf_dataset(_save(tmp_path / "ds"), domain_field="domain", cache_dir=cache)
    count_encode[0] = 0
    changed = load_hf_dataset(
        _save(tmp_path / "ds", seed=1), domain_field="domain", cache_dir=cache
    )
    assert count_encode[0] == 120
    assert (
        changed.train[0].tolist()
        == load_hf_dataset(tmp_path / "ds", domain_field="domain").train[0].tolist()
    )


def _stream(path, buffer=200, val=0):
    return stream_hf_dataset(path, domain_field="domain", buffer_tokens=buffer, val_tokens=val)


def test_streamed_rows_stay_in_their_domain_and_the_buffer_bound(tmp_path, count_encode):
    corpus = _stream(_save(tmp_path / "ds"), buffer=120, val=30)
    assert all(isinstance(s, StreamedDomain) for s in corpus.train)
    assert count_encode[0] < 3 * 40  # not every document was tokenized at load
    sampler = TokenSampler(corpus, seq_len=8, seed=0)
    for _ in range(60):
        batch = sampler.train_batch(per_domain=4)
        for m, name in enumerate(corpus.domains):
            rows = batch["tokens"][batch["domain"] == m]
            assert set(np.unique(rows).tolist()) <= {ord(LETTERS[name]), EOS}
        assert all(len(s) <= 120 for s in corpus.train)
    assert all(s.refills > 0 and s.epochs > 0 for s in corpus.train)  # restarted the data
    for m, name in enumerate(corpus.val_domains):  # held out, never drawn again for training
        assert corpus.val[m].shape == (30,)
        assert set(np.unique(corpus.val[m]).tolist()) <= {ord(LETTERS[name]), EOS}


def test_a_domain_smaller_than_the_buffer_is_held_whole(tmp_path):
    corpus = _stream(_save(tmp_path / "ds", docs_per_domain=3), buffer=1000)
    stream = corpus.train[0]
    held = stream[: len(stream)].copy()
    assert stream.whole and held.tolist().count(EOS) == 3
    sampler = TokenSampler(corpus, seq_len=4, seed=0)
    for _ in range(20):
        sampler.train_batch(per_domain=8)
    assert (
        stream.refills == 0 and stream.epochs == 0 and np.array_equal(stream[: len(stream)], held)
    )
    assert sampler.domain_sizes() == [len(s) for s in corpus.train]


def test_domain_sizes_estimate_the_whole_domain(tmp_path):
    corpus = _stream(_save(tmp_path / "ds"), buffer=100)
    sizes = TokenSampler(corpus, seq_len=8).domain_sizes()
    assert all(size > 5 * len(s) for size, s in zip(sizes, corpus.train))  # 40 docs, ~5 held


def _draw(sampler, n):
    out = []
    for _ in range(n):
        out.append(sampler.train_batch(per_domain=3)["tokens"])
        out.append(sampler.mixture_batch(np.array([0.5, 0.3, 0.2]), 5)["tokens"])
    return out


def test_streamed_resume_is_bit_identical(tmp_path):
    data = _save(tmp_path / "ds")
    sampler = TokenSampler(_stream(data, buffer=90, val=20), seq_len=8, seed=3)
    _draw(sampler, 7)
    state = json.loads(json.dumps(sampler.state_dict()))  # a checkpoint stores it as JSON
    assert set(state["streams"]) == {"a", "b", "c"}
    after = _draw(sampler, 30)
    assert all(s.epochs > 0 for s in sampler.corpus.train)  # the resumed part crosses epochs
    again = TokenSampler(_stream(data, buffer=90, val=20), seq_len=8, seed=3)
    again.load_state_dict(state)
    for a, b in zip(after, _draw(again, 30)):
        assert np.array_equal(a, b)
    rngs_only = TokenSampler(_stream(data, buffer=90, val=20), seq_len=8, seed=3)
    rngs_only.load_state_dict({k: v for k, v in state.items() if k != "streams"})
    assert not all(np.array_equal(a, b) for a, b in zip(after, _draw(rngs_only, 30)))


def test_a_state_without_stream_positions_still_loads(tmp_path):
    sampler = TokenSampler(_stream(_save(tmp_path / "ds")), seq_len=8, seed=0)
    state = sampler.state_dict()
    del state["streams"]  # as saved before streamed domains existed
    sampler.load_state_dict(state)
    with pytest.raises(ValueError, match="not a StreamedDomain state"):
        sampler.load_state_dict({**sampler.state_dict(), "streams": {"a": {"version": 99}}})


def test_streaming_config_and_fingerprint(tmp_path):
    with pytest.raises(ConfigError, match="data.hf_streaming needs data.hf_dataset"):
        DataConfig(hf_streaming=True)
    with pytest.raises(ConfigError, match="data.stream_val_tokens"):
        DataConfig(hf_dataset="x", hf_streaming=True, val_fraction=0.1)
    with pytest.raises(ConfigError, match="data.stream_buffer_tokens"):
        DataConfig(hf_dataset="x", hf_streaming=True, stream_buffer_tokens=8)
    data = _save(tmp_path / "ds")
    cfg = DataConfig(hf_dataset=str(data), hf_streaming=True, stream_val_tokens=20)
    corpus = _stream(data, val=20)
    got = fp.data_fingerprint(cfg, corpus)
    assert got["files"] and all(k.startswith("data.hf_dataset/") for k in got["files"])
    assert sorted(got["streams"]) == [f"validation domain {d!r}" for d in "abc"]


def test_streamed_cli_run_resumes_bitwise(tmp_path, monkeypatch):
    backend = a_backend()
    data = _save(tmp_path / "ds", docs_per_domain=60)
    sets = small_job(
        f'data.hf_dataset="{data}"',
        "data.hf_streaming=true",
        "data.stream_buffer_tokens=200",
        "data.stream_val_tokens=40",
        f"run.backend={backend}",
        "train.steps=40",
        "run.checkpoint_every=7",
        "train.probe_steps=3",
        "train.free_steps=4",
    )

    def args(run):
        return [*set_args(*sets, f'run.run_dir="{run}"'), "-q"]

    assert main(["optimize", *args(tmp_path / "whole")]) == 0
    real, calls = TokenSampler.train_batch, [0]

    def stop_midway(self, per_domain):
        calls[0] += 1
        if calls[0] == 12:  # the loop stops at its next tick and saves a checkpoint
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, per_domain)

    monkeypatch.setattr(TokenSampler, "train_batch", stop_midway)
    cut = tmp_path / "cut"
    assert main(["optimize", *args(cut)]) == 143
    monkeypatch.setattr(TokenSampler, "train_batch", real)
    assert main(["optimize", *args(cut), "--resume"]) == 0
    whole = json.loads((tmp_path / "whole" / "mixture.json").read_text())
    resumed = json.loads((cut / "mixture.json").read_text())
    assert whole["trajectory"] == resumed["trajectory"] and whole["average"] == resumed["average"]

    def metrics(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]

    assert metrics(tmp_path / "whole") == metrics(cut)
