"""Readers -> DomainCorpus: formats, layouts, validation options, tokenizers, malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tandem_adapters.data import (
    ByteTokenizer,
    DataError,
    DomainCorpus,
    FileTokenizer,
    from_arrays,
    load_folder,
    load_hf_dataset,
    load_tokenizer,
)

EOS = 256


def byte_stream(*docs: str) -> list[int]:
    out: list[int] = []
    for doc in docs:
        out += list(doc.encode("utf-8")) + [EOS]
    return out


def split_docs(stream) -> list[str]:
    text = ByteTokenizer().decode([t if t != EOS else ord("|") for t in stream.tolist()])
    return text.split("|")[:-1]


def write(path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# ---- tokenizers ---------------------------------------------------------------------------------


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo wörld ✓ 𝄞"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids + [tok.eos_id]) == text
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    plain = ByteTokenizer(add_eos=False)
    assert (plain.vocab_size, plain.eos_id) == (256, None)
    assert isinstance(load_tokenizer(None), ByteTokenizer)


@pytest.fixture
def word_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "<eos>": 1, "hello": 2, "world": 3, "foo": 4}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def test_tokenizer_json(word_tokenizer, tmp_path):
    for where in (word_tokenizer, word_tokenizer.parent):  # the file, or a folder holding it
        tok = load_tokenizer(where)
        assert isinstance(tok, FileTokenizer)
        assert tok.encode("hello world zzz") == [2, 3, 0]
        assert (tok.vocab_size, tok.eos_id) == (5, 1)
    write(tmp_path / "data" / "a.txt", "hello foo\nworld\n")
    corpus = load_folder(tmp_path / "data", tokenizer=str(word_tokenizer))
    assert corpus.vocab_size == 5
    assert corpus.train[0].tolist() == [2, 4, 1, 3, 1]
    np.save(tmp_path / "data" / "b.npy", np.array([4, 4, 1], dtype=np.int32))
    assert load_folder(tmp_path / "data", tokenizer=word_tokenizer).vocab_size == 5
    np.save(tmp_path / "data" / "b.npy", np.array([4, 5], dtype=np.int32))
    with pytest.raises(DataError, match=r"b\.npy: token id 5 is outside \[0, 5\)"):
        load_folder(tmp_path / "data", tokenizer=word_tokenizer)
    with pytest.raises(DataError, match="eos_token 'EOS!' is not in the vocabulary"):
        load_tokenizer(word_tokenizer, eos_token="EOS!")
    with pytest.raises(DataError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nothing.json")
    write(tmp_path / "bad.json", "{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


# ---- formats and layouts ------------------------------------------------------------------------


def test_txt_file_per_domain(tmp_path):
    write(tmp_path / "b.txt", "beta one\n\n   \nbeta two\r\n")
    write(tmp_path / "a.txt", "alpha ✓\n")
    write(tmp_path / ".hidden", "ignored")
    corpus = load_folder(tmp_path)
    assert isinstance(corpus, DomainCorpus)
    assert corpus.domains == ("a", "b")  # sorted by name
    assert corpus.train[0].tolist() == byte_stream("alpha ✓")
    assert corpus.train[1].tolist() == byte_stream("beta one", "beta two")  # blank lines skipped
    assert corpus.vocab_size == 257
    assert corpus.val_domains == () and corpus.val == ()


def test_subfolder_layout_mixes_formats(tmp_path):
    write(tmp_path / "web" / "2.jsonl", jsonl({"body": "second"}))
    write(tmp_path / "web" / "1.txt", "first\n")
    write(tmp_path / "web" / "nested" / "3.txt", "third\n")
    write(tmp_path / "code" / "x.jsonl", jsonl({"body": "a\nb", "id": 1}, {"body": ""}))
    corpus = load_folder(tmp_path, text_field="body")
    assert corpus.domains == ("code", "web")
    assert corpus.train[0].tolist() == byte_stream("a\nb")  # empty document skipped
    # files in sorted relative-path order: 1.txt, 2.jsonl, nested/3.txt
    assert corpus.train[1].tolist() == byte_stream("first", "second", "third")


def test_npy_is_memory_mapped_and_vocab_inferred(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1, 2, 3, 4], dtype=np.int32))
    np.save(tmp_path / "b.npy", np.array([9, 0, 5], dtype=np.int64))
    corpus = load_folder(tmp_path)
    assert isinstance(corpus.train[0], np.memmap)
    assert corpus.train[1].tolist() == [9, 0, 5]
    assert corpus.vocab_size == 10  # pre-tokenized only: max id + 1
    assert load_folder(tmp_path, vocab_size=50).vocab_size == 50


def test_bin_uint16_default(tmp_path):
    ids = np.array([0, 65535, 7, 300], dtype=np.uint16)
    ids.tofile(tmp_path / "a.bin")
    corpus = load_folder(tmp_path, vocab_size=65536)
    assert isinstance(corpus.train[0], np.memmap) and corpus.train[0].dtype == np.uint16
    assert corpus.train[0].tolist() == ids.tolist()


def test_bin_uint32_sidecar_and_parameter(tmp_path):
    ids = np.array([70000, 1, 100000, 2], dtype=np.uint32)
    ids.tofile(tmp_path / "a.bin")
    write(tmp_path / "a.bin.dtype", "uint32\n")
    corpus = load_folder(tmp_path)
    assert corpus.domains == ("a",)  # the sidecar is not a domain
    assert corpus.train[0].dtype == np.uint32 and corpus.train[0].tolist() == ids.tolist()
    assert corpus.vocab_size == 100001
    (tmp_path / "a.bin.dtype").unlink()
    assert load_folder(tmp_path, bin_dtype="uint32").train[0].tolist() == ids.tolist()
    # without either, the same bytes read as uint16 are different tokens
    assert load_folder(tmp_path).train[0].tolist() != ids.tolist()


# ---- validation options -------------------------------------------------------------------------


def test_val_folder_is_per_domain(tmp_path):
    write(tmp_path / "train" / "a.txt", "aaa\n")
    write(tmp_path / "train" / "b" / "x.txt", "bbb\n")
    write(tmp_path / "val" / "b.txt", "vb\n")
    write(tmp_path / "val" / "a.txt", "va\n")
    corpus = load_folder(tmp_path / "train", val_path=tmp_path / "val")
    assert corpus.val_domains == corpus.domains == ("a", "b")
    assert corpus.per_domain_validation
    assert corpus.val[0].tolist() == byte_stream("va")


def test_val_fraction_split_is_seeded(tmp_path):
    docs = [f"doc {i}" for i in range(20)]
    write(tmp_path / "a.txt", "\n".join(docs))
    np.save(tmp_path / "b.npy", np.arange(100, dtype=np.int32))
    corpus = load_folder(tmp_path, val_fraction=0.25, seed=3)
    again = load_folder(tmp_path, val_fraction=0.25, seed=3)
    other = load_folder(tmp_path, val_fraction=0.25, seed=4)
    assert corpus.per_domain_validation
    assert np.array_equal(corpus.val[0], again.val[0])
    assert not np.array_equal(corpus.val[0], other.val[0])
    # 5 of 20 documents held out, order kept, nothing lost or duplicated
    val_docs, train_docs = split_docs(corpus.val[0]), split_docs(corpus.train[0])
    assert (len(val_docs), len(train_docs)) == (5, 15)
    assert sorted(val_docs + train_docs) == sorted(docs)
    assert val_docs == sorted(val_docs, key=docs.index)
    # pre-tokenized: the tail of the array, as a view
    assert corpus.train[1].tolist() == list(range(75))
    assert corpus.val[1].tolist() == list(range(75, 100))
    with pytest.raises(ValueError, match="val_fraction"):
        load_folder(tmp_path, val_fraction=1.5)


def test_target_path_file_and_folder(tmp_path):
    write(tmp_path / "train" / "a.txt", "aaa\n")
    write(tmp_path / "train" / "b.txt", "bbb\n")
    write(tmp_path / "eval.jsonl", jsonl({"text": "target doc"}))
    corpus = load_folder(tmp_path / "train", target_path=tmp_path / "eval.jsonl")
    assert corpus.val_domains == ("eval",) and not corpus.per_domain_validation
    assert corpus.val[0].tolist() == byte_stream("target doc")
    write(tmp_path / "targets" / "t2.txt", "two\n")
    write(tmp_path / "targets" / "t1.txt", "one\n")
    corpus = load_folder(tmp_path / "train", target_path=tmp_path / "targets")
    assert corpus.val_domains == ("t1", "t2")
    with pytest.raises(ValueError, match="at most one of"):
        load_folder(tmp_path / "train", target_path=tmp_path / "targets", val_fraction=0.5)


# ---- from_arrays --------------------------------------------------------------------------------


def test_from_arrays():
    corpus = from_arrays({"x": np.arange(5), "y": ["hi", "", "yo"]}, target=np.array([1, 2, 3]))
    assert corpus.domains == ("x", "y") and corpus.val_domains == ("target",)
    assert corpus.train[1].tolist() == byte_stream("hi", "yo")
    assert corpus.vocab_size == 257  # text present -> the byte tokenizer's
    arrays = from_arrays({"b": [3, 4, 5], "a": np.array([0, 1])}, {"b": [1, 2], "a": [2, 2]})
    assert arrays.domains == ("b", "a")  # dict order is kept
    assert arrays.per_domain_validation and arrays.vocab_size == 6
    assert from_arrays({"a": [1, 2]}, vocab_size=100).vocab_size == 100
    two = from_arrays({"a": [1, 2]}, target={"t1": [1, 1], "t2": ["doc"]})
    assert two.val_domains == ("t1", "t2")
    with pytest.raises(DataError, match=r"validation domains \['a'\] differ"):
        from_arrays({"a": [1, 2], "b": [1, 2]}, val={"a": [1, 2]})
    with pytest.raises(ValueError, match="either val"):
        from_arrays({"a": [1, 2]}, val={"a": [1, 2]}, target=[1, 2])
    with pytest.raises(DataError, match="'a': token id 7 is outside \\[0, 5\\)"):
        from_arrays({"a": [1, 7]}, vocab_size=5)
    with pytest.raises(DataError, match="not a single string"):
        from_arrays({"a": "just one string"})
    with pytest.raises(DataError, match="domain 'a' is empty"):
        from_arrays({"a": ["", ""], "b": ["ok"]})
    with pytest.raises(DataError, match="1-D integer"):
        from_arrays({"a": np.zeros((2, 2), dtype=np.int32)})


# ---- malformed input ----------------------------------------------------------------------------


def _bad(tmp_path, name: str):
    """Write one malformed case into tmp_path/data; return the regex its error must match."""
    root = tmp_path / "data"
    write(root / "ok.txt", "fine\n")
    if name == "invalid_json":
        write(root / "a.jsonl", jsonl({"text": "x"}) + '{"text": oops}\n')
        return r"a\.jsonl:2: invalid JSON"
    if name == "json_not_object":
        write(root / "a.jsonl", "[1, 2]\n")
        return r"a\.jsonl:1: expected a JSON object"
    if name == "missing_field":
        write(root / "a.jsonl", jsonl({"text": "x"}, {"text": "y"}, {"content": "z"}))
        return r"a\.jsonl:3: missing text field 'text'"
    if name == "text_not_string":
        write(root / "a.jsonl", jsonl({"text": 5}))
        return r"a\.jsonl:1: field 'text' must be a string"
    if name == "non_utf8":
        write(root / "a.txt", b"good\nbad \xff\xfe byte\n")
        return r"a\.txt:2: not valid UTF-8"
    if name == "token_out_of_range":
        np.save(root / "a.npy", np.array([1, 2, 300], dtype=np.int32))
        return r"a\.npy: token id 300 is outside \[0, 257\)"
    if name == "negative_token":
        np.save(root / "a.npy", np.array([1, -4], dtype=np.int32))
        return r"a\.npy: token id -4"
    if name == "npy_2d":
        np.save(root / "a.npy", np.zeros((2, 3), dtype=np.int32))
        return r"a\.npy: expected a 1-D integer array"
    if name == "npy_float":
        np.save(root / "a.npy", np.zeros(3))
        return r"a\.npy: expected a 1-D integer array"
    if name == "bin_odd_bytes":
        write(root / "a.bin", b"\x01\x00\x02")
        return r"a\.bin: 3 bytes is not a whole number of uint16 tokens"
    if name == "bad_sidecar":
        write(root / "a.bin", b"\x01\x00\x02\x00")
        write(root / "a.bin.dtype", "float32")
        return r"a\.bin\.dtype: unsupported \.bin dtype 'float32'"
    if name == "unknown_extension":
        write(root / "a.csv", "x,y\n")
        return r"a\.csv: unknown file extension '\.csv'"
    if name == "empty_domain_file":
        write(root / "a.txt", "\n  \n\n")
        return r"domain 'a' is empty: no tokens in .*a\.txt"
    if name == "empty_domain_folder":
        (root / "a").mkdir()
        write(root / "a" / ".DS_Store", "junk")
        return r"domain 'a' is empty"
    if name == "empty_jsonl_documents":
        write(root / "a.jsonl", jsonl({"text": ""}, {"text": ""}))
        return r"domain 'a' is empty"
    if name == "duplicate_domain":
        write(root / "a.txt", "x\n")
        write(root / "a.jsonl", jsonl({"text": "y"}))
        return r"more than one file or folder for domain 'a'"
    raise AssertionError(name)


CASES = [
    "invalid_json",
    "json_not_object",
    "missing_field",
    "text_not_string",
    "non_utf8",
    "token_out_of_range",
    "negative_token",
    "npy_2d",
    "npy_float",
    "bin_odd_bytes",
    "bad_sidecar",
    "unknown_extension",
    "empty_domain_file",
    "empty_domain_folder",
    "empty_jsonl_documents",
    "duplicate_domain",
]


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_names_the_place(tmp_path, case):
    pattern = _bad(tmp_path, case)
    # a text file forces the byte vocabulary (257), so token_out_of_range is out of range
    with pytest.raises(DataError, match=pattern):
        load_folder(tmp_path / "data")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match=r"nope: training folder not found"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: empty training folder"):
        load_folder(tmp_path / "empty")
    write(tmp_path / "train" / "a.txt", "x\n")
    with pytest.raises(DataError, match=r"val: validation folder not found"):
        load_folder(tmp_path / "train", val_path=tmp_path / "val")


def test_paths_are_named_for_what_they_are(tmp_path):
    write(tmp_path / "train" / "a.txt", "x\n")
    with pytest.raises(DataError, match=r"a\.txt: is a file; the training data must be a folder"):
        load_folder(tmp_path / "train" / "a.txt")
    with pytest.raises(DataError, match=r"t\.txt: target file or folder not found"):
        load_folder(tmp_path / "train", target_path=tmp_path / "t.txt")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage, not numpy\n", r"a\.npy: not a \.npy file \(no NumPy header"),
        (b"", r"a\.npy: not a \.npy file"),
        (None, r"a\.npy: not a readable \.npy file"),  # a real .npy of objects
    ],
    ids=["garbage", "empty", "object_array"],
)
def test_bad_npy_is_described(tmp_path, content, message):
    if content is None:
        np.save(tmp_path / "a.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        write(tmp_path / "a.npy", content)
    with pytest.raises(DataError, match=message) as info:
        load_folder(tmp_path)
    assert "pickled" not in str(info.value) or content is None


def test_out_of_vocabulary_hint_names_the_tokenizer_not_a_missing_key(tmp_path):
    write(tmp_path / "a.txt", "text\n")
    np.save(tmp_path / "b.npy", np.array([1, 50000], dtype=np.int32))  # e.g. GPT-2 ids
    with pytest.raises(DataError, match=r"b\.npy: token id 50000 is outside \[0, 257\)") as info:
        load_folder(tmp_path)
    assert "ByteTokenizer" in str(info.value) and "data.tokenizer" in str(info.value)
    assert "larger vocab_size" not in str(info.value)  # no such key in the CLI


def test_mismatched_val_domains(tmp_path):
    write(tmp_path / "train" / "a.txt", "x\n")
    write(tmp_path / "train" / "b.txt", "x\n")
    write(tmp_path / "val" / "a.txt", "x\n")
    write(tmp_path / "val" / "c.txt", "x\n")
    with pytest.raises(DataError, match=r"missing \['b'\], extra \['c'\]"):
        load_folder(tmp_path / "train", val_path=tmp_path / "val")


def test_token_id_error_with_explicit_vocab(tmp_path):
    np.save(tmp_path / "a.npy", np.array([1, 2, 99], dtype=np.int32))
    with pytest.raises(DataError, match=r"a\.npy: token id 99 is outside \[0, 50\).*vocab_size"):
        load_folder(tmp_path, vocab_size=50)
    write(tmp_path / "b.txt", "text\n")
    with pytest.raises(DataError, match="smaller than the tokenizer's 257"):
        load_folder(tmp_path, vocab_size=200)


# ---- Hugging Face datasets (optional) -----------------------------------------------------------


def test_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["a1", "b1", "a2", "", "b2"], "src": ["a", "b", "a", "b", "b"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "flat"))
    corpus = load_hf_dataset(tmp_path / "flat", domain_field="src")
    assert corpus.domains == ("a", "b") and corpus.val_domains == ()
    assert corpus.train[0].tolist() == byte_stream("a1", "a2")
    assert corpus.train[1].tolist() == byte_stream("b1", "b2")

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict(rows),
        validation=datasets.Dataset.from_dict({"text": ["va", "vb"], "src": ["a", "b"]}),
        target=datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    per_domain = load_hf_dataset(tmp_path / "dict", domain_field="src", val_split="validation")
    assert per_domain.per_domain_validation
    assert per_domain.val[1].tolist() == byte_stream("vb")
    target = load_hf_dataset(tmp_path / "dict", domain_field="src", target_split="target")
    assert target.val_domains == ("target",) and target.val[0].tolist() == byte_stream("t1", "t2")
    split = load_hf_dataset(tmp_path / "flat", domain_field="src", val_fraction=0.5)
    assert split.val[0].tolist().count(EOS) == 1
    with pytest.raises(DataError, match="no column 'domain'"):
        load_hf_dataset(tmp_path / "flat", domain_field="domain")
    with pytest.raises(DataError, match="no split 'test'"):
        load_hf_dataset(tmp_path / "dict", domain_field="src", val_split="test")
    with pytest.raises(DataError, match="dataset directory not found"):
        load_hf_dataset(tmp_path / "missing", domain_field="src")
