"""Token shards read lazily: ``ShardedStream``, Megatron ``.bin`` + ``.idx``, raw dolma arrays."""

from __future__ import annotations

import numpy as np
import pytest

from tandem_adapters.data import DataError, TokenSampler, load_folder
from tandem_adapters.data.formats import read_file
from tandem_adapters.data.megatron import HEADER_BYTES, read_megatron, write_megatron
from tandem_adapters.data.shards import DocumentStream, Shard, ShardedStream
from tandem_adapters.data.windows import cut_rows, windows
from tandem_core import IGNORE_INDEX


def shards_of(*arrays: np.ndarray) -> list[Shard]:
    return [Shard(f"part{i}", a) for i, a in enumerate(arrays)]


@pytest.fixture
def parts() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 50, n).astype(dt)
        for n, dt in ((7, np.uint16), (1, np.uint16), (30, np.uint32), (5, np.int32))
    ]


def test_indexing_matches_concatenate(parts):
    stream, whole = ShardedStream(shards_of(*parts), vocab_size=50), np.concatenate(parts)
    assert stream.shape == whole.shape and len(stream) == whole.shape[0] and stream.ndim == 1
    assert stream.dtype == np.result_type(*[p.dtype for p in parts])
    for i in (0, 6, 7, 8, 37, -1, -43):
        assert stream[i] == whole[i]
    for key in (slice(None), slice(3, 12), slice(5, 40, 3), slice(-9, None), slice(8, 8)):
        np.testing.assert_array_equal(stream[key], whole[key])
    index = np.random.default_rng(1).integers(0, whole.shape[0], (6, 9))
    np.testing.assert_array_equal(stream[index], whole[index])
    np.testing.assert_array_equal(np.asarray(stream), whole)
    with pytest.raises(IndexError):
        stream[np.array([whole.shape[0]])]


def test_windows_match_the_concatenated_stream(parts):
    stream, whole = ShardedStream(shards_of(*parts), vocab_size=50), np.concatenate(parts)
    starts = np.arange(0, whole.shape[0], dtype=np.int64)  # every start, incl. padded tails
    for got, want in zip(cut_rows(stream, starts, 8), windows(whole, starts, 8)):
        np.testing.assert_array_equal(got, want)


def test_view_is_lazy_and_exact(parts):
    stream, whole = ShardedStream(shards_of(*parts)), np.concatenate(parts)
    view = stream.view(5, 40)
    np.testing.assert_array_equal(view[:], whole[5:40])
    assert view.shards[0].offset == 5 and view.shards[-1].offset == 0


def test_out_of_range_id_is_caught_at_batch_time_naming_file_and_offset(tmp_path):
    a = np.arange(100, dtype=np.uint16) % 10
    b = a.copy()
    b[63] = 999
    stream = ShardedStream([Shard("a.bin", a), Shard("b.bin", b, offset=1000)], vocab_size=10)
    stream[np.arange(100)]  # the first shard is fine
    with pytest.raises(DataError, match=r"b\.bin: token id 999 at token offset 1063 .*\[0, 10\)"):
        stream[np.arange(150, 170)]


def test_documents_mode_never_crosses_a_boundary(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.full(n, i + 1, dtype=np.uint16) for i, n in enumerate(rng.integers(1, 40, 60))]
    write_megatron(tmp_path / "a", docs[:30])
    write_megatron(tmp_path / "b", docs[30:])
    shards = []
    for name in ("a", "b"):
        tokens, documents = read_megatron(tmp_path / f"{name}.bin", tmp_path / f"{name}.idx")
        shards.append(Shard(name, tokens, documents=documents))
    stream = DocumentStream(shards, vocab_size=100)
    t = 16
    starts = stream.draw_starts(t, 2000, np.random.default_rng(1))
    tokens, labels = stream.windows(starts, t)
    for row_t, row_l in zip(tokens, labels):  # each doc holds one id: a row shows only it
        ids = set(row_t[row_t > 0].tolist()) | set(row_l[row_l != IGNORE_INDEX].tolist())
        assert len(ids) == 1
    first = stream.first_starts(t, 10_000)
    ft, fl = stream.windows(first, t)
    # every label of every document is covered once by the deterministic rows
    assert int((fl != IGNORE_INDEX).sum()) == sum(len(d) - 1 for d in docs)
    assert all(len(set(r[r != IGNORE_INDEX].tolist())) <= 1 for r in fl)
    # short documents (< T + 1) give padded rows
    assert (labels == IGNORE_INDEX).any()


def test_megatron_known_answer(tmp_path):
    docs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    write_megatron(tmp_path / "x", docs, dtype="int32")
    raw = (tmp_path / "x.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00" and raw[17] == 4  # version 1, dtype code 4 = int32
    assert len(raw) == HEADER_BYTES + 12 * 3 + 8 * 4
    stream = read_file(tmp_path / "x.bin")
    assert isinstance(stream, ShardedStream) and stream.dtype == np.int32
    np.testing.assert_array_equal(stream[:], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(stream.shards[0].documents(), [0, 3, 4])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda idx, b: idx.write_bytes(b"XXXXXXXX" + idx.read_bytes()[8:]), "bad magic"),
        (lambda idx, b: idx.write_bytes(idx.read_bytes()[:20]), "truncated"),
        (lambda idx, b: idx.write_bytes(idx.read_bytes()[:-8]), "truncated or mismatched"),
        (
            lambda idx, b: idx.write_bytes(idx.read_bytes()[:17] + b"\x09" + idx.read_bytes()[18:]),
            "unknown Megatron dtype code 9",
        ),
        (lambda idx, b: b.write_bytes(b.read_bytes()[:-2]), "do not belong together"),
    ],
)
def test_bad_megatron_files_name_the_file(tmp_path, damage, match):
    write_megatron(tmp_path / "x", [np.arange(5), np.arange(3)])
    damage(tmp_path / "x.idx", tmp_path / "x.bin")
    with pytest.raises(DataError, match=match) as err:
        read_file(tmp_path / "x.bin")
    assert "x." in str(err.value)


def test_raw_dolma_arrays_need_raw_dtype(tmp_path):
    ids = np.arange(40, dtype=np.uint32)
    ids.tofile(tmp_path / "part-0.npy")  # headerless, as dolma writes it
    with pytest.raises(DataError, match="data.raw_dtype"):
        read_file(tmp_path / "part-0.npy")
    np.testing.assert_array_equal(read_file(tmp_path / "part-0.npy", raw_dtype="uint32"), ids)
    with pytest.raises(DataError, match="unsupported token dtype 'float9'"):
        read_file(tmp_path / "part-0.npy", raw_dtype="float9")


def test_mixed_formats_in_one_domain(tmp_path):
    d = tmp_path / "train" / "web"
    d.mkdir(parents=True)
    a, b, c, e = (np.arange(k, k + 20, dtype=np.uint16) for k in (0, 20, 40, 60))
    a.tofile(d / "0.bin")  # nanoGPT
    np.save(d / "1.npy", b)
    c.astype(np.uint32).tofile(d / "2.npy")  # dolma raw
    write_megatron(d / "3", [e[:5], e[5:]])  # Megatron .bin + .idx
    (tmp_path / "train" / "code.bin").write_bytes(np.arange(30, dtype=np.uint16).tobytes())
    corpus = load_folder(tmp_path / "train", raw_dtype="uint32")
    web = corpus.train[corpus.domains.index("web")]
    assert isinstance(web, ShardedStream) and len(web.shards) == 4
    np.testing.assert_array_equal(web[:], np.arange(80))
    batch = TokenSampler(corpus, seq_len=8, seed=0).train_batch(4)
    assert batch["tokens"].shape == (8, 8)


def test_documents_mode_needs_boundaries(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    np.arange(50, dtype=np.uint16).tofile(root / "a.bin")
    with pytest.raises(DataError, match="data.windows='documents' needs document boundaries"):
        load_folder(root, windows="documents")
    write_megatron(root / "b", [np.arange(7), np.arange(9)])
    (root / "a.bin").unlink()
    corpus = load_folder(root, windows="documents")
    assert isinstance(corpus.train[0], DocumentStream)
    TokenSampler(corpus, seq_len=4).train_batch(3)


def test_short_shard_joins_the_others_when_spanning(tmp_path):
    d = tmp_path / "train" / "web"
    d.mkdir(parents=True)
    np.arange(3, dtype=np.uint16).tofile(d / "a.bin")  # shorter than one window
    np.arange(3, 40, dtype=np.uint16).tofile(d / "b.bin")
    corpus = load_folder(tmp_path / "train")
    tokens, labels = cut_rows(corpus.train[0], np.array([1]), 8)
    np.testing.assert_array_equal(tokens[0], np.arange(1, 9))


def test_val_fraction_splits_shards_without_copying(tmp_path):
    d = tmp_path / "train" / "web"
    d.mkdir(parents=True)
    write_megatron(d / "m", [np.arange(50), np.arange(50, 100)])
    np.arange(100, 200, dtype=np.uint16).tofile(d / "n.bin")
    corpus = load_folder(tmp_path / "train", val_fraction=0.1)
    got = np.concatenate([corpus.train[0][:], corpus.val[0][:]])
    assert sorted(got.tolist()) == list(range(200))


def _rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_a_large_corpus_loads_without_reading_it(tmp_path):
    root = tmp_path / "train"
    for domain in range(4):
        d = root / f"d{domain}"
        d.mkdir(parents=True)
        for shard in range(4):  # 16 files of 12.5 MB: 200 MB of uint16 ids
            ids = np.arange(6_250_000, dtype=np.uint16) % 50_000
            ids.tofile(d / f"{shard}.bin")
            del ids
    before = _rss_anon_kb()
    corpus = load_folder(root)
    sampler = TokenSampler(corpus, seq_len=256, seed=0)
    batch = sampler.train_batch(8)
    grown = (_rss_anon_kb() - before) / 1024
    assert batch["tokens"].shape == (32, 256)
    assert all(isinstance(s, ShardedStream) for s in corpus.train)
    assert grown < 50, f"RssAnon grew by {grown:.1f} MB"


def test_config_keys_are_validated_and_threaded(tmp_path):
    from tandem_adapters.config import DataConfig
    from tandem_adapters.jobs import load_corpus
    from tandem_core import ConfigError

    with pytest.raises(ConfigError, match="data.windows='rows'"):
        DataConfig(windows="rows")
    with pytest.raises(ConfigError, match="data.raw_dtype='float32'"):
        DataConfig(raw_dtype="float32")
    root = tmp_path / "train"
    root.mkdir()
    np.arange(64, dtype=np.uint32).tofile(root / "a.npy")
    write_megatron(root / "b", [np.arange(10), np.arange(12)])
    corpus = load_corpus(DataConfig(path=str(root), raw_dtype="uint32"))
    np.testing.assert_array_equal(corpus.train[0][:], np.arange(64))
    with pytest.raises(DataError, match=r"a\.npy: data.windows='documents'"):
        load_corpus(DataConfig(path=str(root), raw_dtype="uint32", windows="documents"))
    (root / "a.npy").unlink()
    corpus = load_corpus(DataConfig(path=str(root), windows="documents"))
    assert isinstance(corpus.train[0], DocumentStream)


def test_large_corpus_vocab_from_a_sample_and_ids_checked_at_batch_time(tmp_path, monkeypatch):
    from tandem_adapters.data import streams

    monkeypatch.setattr(streams, "FULL_SCAN_TOKENS", 100)  # "large": no full scan at load
    monkeypatch.setattr(streams, "SAMPLE_TOKENS", 64)
    root = tmp_path / "train"
    root.mkdir()
    ids = np.arange(10_000, dtype=np.uint16) % 100
    ids[7_780] = 5_000  # outside the sample's blocks
    ids.tofile(root / "web.bin")
    corpus = load_folder(root)
    assert corpus.vocab_size == 100  # max id + 1 of the sample
    with pytest.raises(DataError, match=r"web\.bin: token id 5000 at token offset 7780"):
        corpus.train[0][np.arange(7_770, 7_790)]
    assert load_folder(root, vocab_size=6_000).train[0][7_780] == 5_000


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
@pytest.mark.parametrize("multimodal", [False, True])
def test_megatron_own_builder_reads_back(tmp_path, dtype, multimodal):
    """A dataset written by Megatron-LM's ``IndexedDatasetBuilder`` (skipped without it)."""
    import warnings

    with warnings.catch_warnings():  # megatron warns at import that Apex is missing
        warnings.simplefilter("ignore")
        torch = pytest.importorskip("torch")
        indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(0)
    builder = indexed.IndexedDatasetBuilder(
        str(tmp_path / "x.bin"), dtype=np.dtype(dtype).type, multimodal=multimodal
    )
    docs = []  # each document: its sequences
    for k in range(12):
        seqs = [rng.integers(0, 1000, int(n)) for n in rng.integers(1, 20, 1 + k % 3)]
        if k % 2:  # item by item, then end_document
            for s in seqs:
                builder.add_item(torch.from_numpy(s))
            builder.end_document()
        else:  # the whole document at once, as Megatron's preprocess_data.py does (a list)
            lengths = [len(s) for s in seqs]
            builder.add_document(np.concatenate(seqs).tolist(), lengths, [0] * len(seqs))
        docs.append(seqs)
    builder.finalize(str(tmp_path / "x.idx"))
    tokens, documents = read_megatron(tmp_path / "x.bin", tmp_path / "x.idx")
    whole = np.concatenate([s for d in docs for s in d])
    assert tokens.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(tokens, whole)
    sizes = [sum(len(s) for s in d) for d in docs]
    np.testing.assert_array_equal(documents(), np.cumsum([0, *sizes[:-1]]))
    stream = read_file(tmp_path / "x.bin")  # the folder reader's path: the same shard
    np.testing.assert_array_equal(stream[:], whole)


def _write_dolma(path, documents, dtype) -> None:
    """dolma's tokenizer layout: raw ids ``X.npy``, ``X.csv.gz`` rows ``start,end,id,src,loc``."""
    import csv
    import gzip

    ids = np.memmap(path, dtype=dtype, mode="w+", shape=(sum(map(len, documents)),))
    with gzip.open(path.with_suffix(".csv.gz"), "wt", newline="") as f:
        rows, start = csv.writer(f), 0
        for i, doc in enumerate(documents):
            ids[start : start + len(doc)] = doc
            rows.writerow([start, start + len(doc), f"doc,{i}", "s3://bucket/src.json.gz", i])
            start += len(doc)
    ids.flush()
    del ids


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_dolma_metadata_gives_document_boundaries(tmp_path, dtype):
    rng = np.random.default_rng(0)
    docs = [np.full(int(n), i + 1) for i, n in enumerate(rng.integers(1, 30, 40))]
    (tmp_path / "web").mkdir()
    _write_dolma(tmp_path / "web" / "part-0-00000.npy", docs[:25], dtype)
    _write_dolma(tmp_path / "web" / "part-1-00000.npy", docs[25:], dtype)
    corpus = load_folder(tmp_path, raw_dtype=dtype, windows="documents")  # .csv.gz: no domain
    (stream,) = corpus.train
    assert isinstance(stream, DocumentStream) and corpus.domains == ("web",)
    np.testing.assert_array_equal(stream[:], np.concatenate(docs))
    sizes = [len(d) for d in docs]
    np.testing.assert_array_equal(stream.documents()[0], np.cumsum([0, *sizes[:-1]]))
    tokens, labels = stream.windows(stream.draw_starts(8, 500, np.random.default_rng(1)), 8)
    for row, lab in zip(tokens, labels):  # one document per row: one id, then padding
        assert len(set(row[row > 0])) == 1 and set(lab[lab != IGNORE_INDEX]) <= {row[0]}
    span = load_folder(tmp_path, raw_dtype=dtype)  # the metadata is only read for documents
    np.testing.assert_array_equal(span.train[0][:], np.concatenate(docs))


def test_bad_dolma_metadata_names_file_and_line(tmp_path):
    import gzip

    np.arange(10, dtype=np.uint16).tofile(tmp_path / "a.npy")
    with gzip.open(tmp_path / "a.csv.gz", "wt") as f:
        f.write("0,4,x,s,0\n4,12,y,s,1\n")  # past the 10-token array
    (stream,) = load_folder(tmp_path, raw_dtype="uint16", windows="documents").train
    with pytest.raises(DataError, match=r"a\.csv\.gz:2: document span \[4, 12\)"):
        stream.documents()
