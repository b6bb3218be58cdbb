"""Text formats (jsonl[.gz|.zst], parquet, saved datasets), the token cache, `tandem prepare`."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from utils import a_backend, set_args, small_job

from tandem_adapters.cli import main
from tandem_adapters.data import DataError, TokenSampler, load_folder
from tandem_adapters.data import cache as cache_mod
from tandem_adapters.data.cache import make_cache, resolve_cache_dir
from tandem_adapters.data.hf import stream_documents
from tandem_adapters.data.text import read_documents
from tandem_adapters.data.tokenizer import ByteTokenizer

DOCS = ["first document", "zweites Dokument: é ü", "third\nwith a newline", "4"]


def _write(path, docs, field="text"):
    """Write ``docs`` in the format ``path``'s name asks for; returns the source path."""
    lines = "".join(json.dumps({field: d, "id": str(i)}) + "\n" for i, d in enumerate(docs))
    name = path.name
    if name.endswith(".txt"):
        path.write_text("".join(d.replace("\n", " ") + "\n" for d in docs), encoding="utf-8")
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    elif name.endswith(".jsonl.zst"):
        zstandard = pytest.importorskip("zstandard")
        path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode("utf-8")))
    elif name.endswith(".jsonl"):
        path.write_text(lines, encoding="utf-8")
    elif name.endswith(".parquet"):
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({field: docs, "id": list(range(len(docs)))}), path)
    else:  # a save_to_disk dataset folder
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_dict({field: docs}).save_to_disk(str(path))
    return path


FORMATS = ["a.txt", "a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet", "a_hf"]


def _mk(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    return folder


def _folder(tmp_path, n=40):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "code.jsonl.gz", [f"def f{i}(x): return x * {i}" for i in range(n)])
    _write(data / "web.txt", [f"web page number {i} about things" for i in range(n)])
    _write(data / "books.parquet", [f"Chapter {i}. It was a dark night." for i in range(n)])
    return data


def _batches(corpus, n=3):
    sampler = TokenSampler(corpus, seq_len=8, seed=3)
    return [sampler.train_batch(per_domain=2)["tokens"] for _ in range(n)]


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_reads_its_documents_and_caches_the_same_tokens(tmp_path, name):
    src = _write(_mk(tmp_path) / name, DOCS)
    want = [d.replace("\n", " ") for d in DOCS] if name.endswith(".txt") else DOCS
    assert read_documents(src) == want
    plain = load_folder(src.parent)
    cached = load_folder(src.parent, cache_dir=tmp_path / "cache")
    assert plain.domains == cached.domains == ("a" if name != "a_hf" else "a_hf",)
    assert np.array_equal(plain.train[0], cached.train[0])
    assert cached.vocab_size == plain.vocab_size == 257


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst"])
def test_malformed_jsonl_names_file_and_line_in_every_compression(tmp_path, name):
    src = _write(_mk(tmp_path) / name, ["ok"])
    raw = b'{"text": "ok"}\n{"text": broken\n'
    if name.endswith(".gz"):
        src.write_bytes(gzip.compress(raw))
    elif name.endswith(".zst"):
        import zstandard

        src.write_bytes(zstandard.ZstdCompressor().compress(raw))
    else:
        src.write_bytes(raw)
    with pytest.raises(DataError, match=rf"{name}:2: invalid JSON"):
        load_folder(src.parent, cache_dir=tmp_path / "cache")


def test_parquet_without_the_text_column_is_named(tmp_path):
    src = _write(_mk(tmp_path) / "a.parquet", DOCS, field="body")
    with pytest.raises(DataError, match=r"a.parquet: no column 'text'"):
        read_documents(src)


def test_second_load_comes_from_the_cache_with_identical_batches(tmp_path, count_encode):
    data = _folder(tmp_path)
    first = load_folder(data, cache_dir=tmp_path / "cache")
    assert count_encode[0] == 120
    count_encode[0] = 0
    second = load_folder(data, cache_dir=tmp_path / "cache")
    assert count_encode[0] == 0
    assert all(isinstance(s, np.memmap) for s in second.train)
    assert second.domains == first.domains == ("books", "code", "web")
    for a, b in zip(_batches(first), _batches(second)):
        assert np.array_equal(a, b)
    plain = load_folder(data)  # and the same as without a cache
    for a, b in zip(_batches(plain), _batches(second)):
        assert np.array_equal(a, b)


def test_a_changed_file_with_the_same_size_and_mtime_is_tokenized_again(tmp_path, count_encode):
    data = _mk(tmp_path)
    src = _write(data / "a.jsonl", ["aaaa", "bbbb"])
    before = load_folder(data, cache_dir=tmp_path / "cache").train[0].copy()
    st = src.stat()
    _write(src, ["aaaa", "cccc"])  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    count_encode[0] = 0
    after = load_folder(data, cache_dir=tmp_path / "cache").train[0]
    assert count_encode[0] == 2
    assert after[5:9].tolist() == list(b"cccc") and not np.array_equal(before, after)


class _Upper:
    """A tokenizer object with its own identity: upper-cased bytes."""

    vocab_size, eos_id, cache_identity = 257, 256, "upper-v1"

    def encode(self, text):
        return list(text.upper().encode("utf-8"))


def test_another_tokenizer_or_option_gets_another_entry(tmp_path):
    data = _mk(tmp_path)
    _write(data / "a.jsonl", DOCS)
    root = tmp_path / "cache"
    byte = load_folder(data, cache_dir=root).train[0]
    upper = load_folder(data, tokenizer=_Upper(), cache_dir=root).train[0]
    no_eos = load_folder(data, tokenizer=ByteTokenizer(add_eos=False), cache_dir=root).train[0]
    assert len(list(root.glob("*.npy"))) == 3
    assert upper[:5].tolist() == list(b"FIRST") and byte[:5].tolist() == list(b"first")
    assert 256 in byte and 256 not in no_eos
    other = load_folder(data, text_field="id", cache_dir=root)  # another field: another entry
    assert len(list(root.glob("*.npy"))) == 4 and other.train[0].shape != byte.shape


def test_a_tokenizer_without_identity_is_not_cached(tmp_path):
    class Anonymous(_Upper):
        cache_identity = None

    data = _mk(tmp_path)
    _write(data / "a.jsonl", DOCS)
    load_folder(data, tokenizer=Anonymous(), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("where", ["tokenizer", "writer"])
def test_a_failed_tokenization_or_write_leaves_no_entry(tmp_path, monkeypatch, where):
    data = _mk(tmp_path)
    _write(data / "a.jsonl", DOCS)
    root = tmp_path / "cache"

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "writer":
        monkeypatch.setattr(cache_mod.np, "save", boom)
    else:
        monkeypatch.setattr(ByteTokenizer, "encode", boom)
    with pytest.raises(OSError, match="No space"):
        load_folder(data, cache_dir=root)
    assert not root.exists() or list(root.iterdir()) == []
    monkeypatch.undo()
    cache = make_cache(root)
    assert cache.lookup(cache.key(data / "a.jsonl")) is None
    load_folder(data, cache_dir=root)  # the next run makes a whole entry
    assert cache.lookup(cache.key(data / "a.jsonl")) is not None


def test_an_entry_without_its_sidecar_is_no_entry(tmp_path):
    data = _mk(tmp_path)
    _write(data / "a.jsonl", DOCS)
    root = tmp_path / "cache"
    load_folder(data, cache_dir=root)
    cache = make_cache(root)
    key = cache.key(data / "a.jsonl")
    cache.paths(key)[1].unlink()  # killed between the two writes
    assert cache.lookup(key) is None


def test_cache_dir_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir("auto") == tmp_path / "env"
    assert resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert resolve_cache_dir("") is None and resolve_cache_dir("none") is None
    assert resolve_cache_dir(None) is None
    monkeypatch.setenv("TANDEM_CACHE", "none")
    assert resolve_cache_dir("auto") is None
    monkeypatch.delenv("TANDEM_CACHE")
    assert resolve_cache_dir("auto") == Path("~/.cache/tandem/tokens").expanduser()


def test_val_fraction_splits_documents_without_the_cache(tmp_path):
    data = _folder(tmp_path)
    plain = load_folder(data, val_fraction=0.25)
    cached = load_folder(data, val_fraction=0.25, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    for a, b in zip(plain.val, cached.val):
        assert np.array_equal(a, b)


def test_prepare_fills_the_cache_and_optimize_then_tokenizes_nothing(
    tmp_path, capsys, count_encode
):
    data = _folder(tmp_path, n=80)
    cache = tmp_path / "cache"
    assert main(["prepare", str(data), "--cache-dir", str(cache), "-j", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "3 tokenized" in out and "code.jsonl.gz" in out
    assert len(list(cache.glob("*.json"))) == 3
    assert main(["prepare", str(data), "--cache-dir", str(cache), "-j", "1", "-q"]) == 0
    assert "0 tokenized" in capsys.readouterr().out
    target = _write(tmp_path / "target.txt", [f"target text {i}" for i in range(40)])
    assert main(["prepare", str(target), "--cache-dir", str(cache), "-q"]) == 0
    count_encode[0] = 0
    sets = small_job(
        f"run.backend={a_backend()}",
        f"run.run_dir={json.dumps(str(tmp_path / 'run'))}",
        f"data.path={json.dumps(str(data))}",
        f"data.cache_dir={json.dumps(str(cache))}",
        f"data.target_path={json.dumps(str(target))}",
        "train.method=uniform",
        "train.steps=4",
    )
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    assert count_encode[0] == 0


def test_prepare_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c")]) == 1
    assert main(["prepare", str(tmp_path), "--cache-dir", "none"]) == 2
    assert main(["prepare", str(tmp_path), "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("tandem: ") for line in err)


@pytest.mark.parametrize("name", ["a.jsonl.gz", "a.parquet", "a_hf"])
def test_a_streamed_domain_resumes_at_its_position(tmp_path, name):
    pytest.importorskip("datasets")
    docs = [f"document {i}" for i in range(50)]
    src = _write(_mk(tmp_path) / name, docs)
    stream = stream_documents(src)
    assert stream.documents(7) == docs[:7]
    state = json.loads(json.dumps(stream.state_dict()))  # survives a checkpoint as JSON
    assert stream.documents(5) == docs[7:12]
    again = stream_documents(src)
    again.load_state_dict(state)
    assert again.documents(5) == docs[7:12]
    tokens = again.tokens(ByteTokenizer(), 2)
    assert tokens[:11].tolist() == list(b"document 12") and tokens[11] == 256
    assert again.documents(100) == docs[14:]
