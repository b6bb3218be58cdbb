"""Supervised fine-tuning data: instruction records, loss masks, layouts, the ``"sft"`` suite."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from backend_kits import toy_config
from utils import a_backend, installed_backends, set_args, small_job

from tandem_adapters.cli import main
from tandem_adapters.config import ConfigError, DataConfig
from tandem_adapters.data import ByteTokenizer, DataError, DomainCorpus, TokenSampler, load_folder
from tandem_adapters.data.sft import SFTStream, build_stream, encode_record
from tandem_adapters.data.windows import cut_rows
from tandem_core import IGNORE_INDEX
from tandem_core.methods import Signal
from tandem_core.run import GPTConfig
from tandem_core.run.gpt import init_gpt_params

BYTES = ByteTokenizer()
EOS = BYTES.eos_id
DIGITS = set(b"0123456789")


def _b(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def _records(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    """Prompts of letters, responses of digits: a label is scored iff it is a digit or EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = "".join(rng.choice(list("abcdefgh"), size=rng.integers(1, 12)))
        response = "".join(rng.choice(list("0123456789"), size=rng.integers(1, 6)))
        out.append((f"mem.jsonl:{i + 1}", {"prompt": prompt, "response": response}))
    return out


def _write(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ------------------------------------------------------------------ tokenization


def test_plain_template_exact_ids_and_mask():
    ids, mask = encode_record("f:1", {"prompt": "hi", "response": "yo"}, BYTES)
    head = _b("### Prompt:\nhi\n### Response:\n")
    assert ids == head + _b("yo") + [EOS]
    assert mask == [False] * len(head) + [True] * 3


def test_chat_record_scores_assistant_contents_only():
    record = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "r"},
            {"role": "assistant", "content": "bc"},
        ]
    }
    ids, mask = encode_record("f:1", record, BYTES)
    assert ids == _b("system: s\nuser: q\nassistant: a\nuser: r\nassistant: bc\n") + [EOS]
    scored = [i for i, m in zip(ids, mask) if m]
    assert scored == _b("a\n") + _b("bc\n") + [EOS]  # contents, their newlines, the final EOS


def test_file_tokenizer_plain_template(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tandem_adapters.data import load_tokenizer

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["### Prompt: hello", "### Response: world"] * 20, trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    file_tok = load_tokenizer(tmp_path / "tokenizer.json")
    ids, mask = encode_record("f:1", {"prompt": "hello", "response": " world"}, file_tok)
    response = [i for i, m in zip(ids, mask) if m]
    assert response[-1] == file_tok.eos_id and file_tok.decode(response[:-1]) == " world"
    assert file_tok.decode([i for i, m in zip(ids, mask) if not m]).endswith("### Response:\n")


def _chat_tokenizer():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2", reason="chat templates are rendered with jinja2")
    words = ["<unk>", "<|user|>", "<|assistant|>", "<|end|>", "a", "b", "c", "d"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    template = (
        "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=template, eos_token="<|end|>", unk_token="<unk>"
    )


def test_hugging_face_chat_template_masks_the_assistant_turns():
    tok = _chat_tokenizer()
    user, assistant, end, a, b, c, d = range(1, 8)
    ids, mask = encode_record("f:1", {"prompt": "a b", "response": "c d"}, tok)
    assert ids == [user, a, b, end, assistant, c, d, end]
    assert mask == [False] * 5 + [True] * 3  # the generation prompt <|assistant|> is not scored
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    ids, mask = encode_record("f:1", {"messages": turns}, tok)
    assert [i for i, m in zip(ids, mask) if m] == [b, end, d, end]


def test_chat_template_tokenizer_folder_is_read_for_sft(tmp_path):
    from tandem_adapters.data.sft import load_sft_tokenizer

    _chat_tokenizer().save_pretrained(tmp_path / "tok")
    tok = load_sft_tokenizer(tmp_path / "tok")
    assert encode_record("f:1", {"prompt": "a", "response": "b"}, tok)[1] == [0, 0, 0, 0, 1, 1]


# ------------------------------------------------------------------ layouts through the sampler


def _corpus(layout: str) -> DomainCorpus:
    stream = build_stream(_records(200), BYTES, layout=layout, seq_len=40)
    val = build_stream(_records(20, seed=1), BYTES, layout=layout, seq_len=40)
    return DomainCorpus(("a",), (stream,), ("target",), (val,), BYTES.vocab_size)


def _check_labels(batch: dict) -> None:
    """Digits and EOS occur only in responses: exactly those labels are scored."""
    labels = batch["labels"]
    response = np.isin(labels, [*DIGITS, EOS])
    np.testing.assert_array_equal(labels != IGNORE_INDEX, response)


def test_pack_layout_never_labels_a_prompt_token():
    sampler = TokenSampler(_corpus("pack"), 24, seed=0)
    for batch in (sampler.train_batch(64), sampler.val_batch(16), *sampler.validation_sets(8)):
        _check_labels(batch)
    starts = sampler.train_batch(64)["tokens"][:, 0]
    assert (starts != ord("#")).any()  # rows start anywhere, not only at example starts


def test_pad_layout_rows_are_whole_examples():
    corpus = _corpus("pad")
    stream = corpus.train[0]
    sampler = TokenSampler(corpus, 64, seed=0)  # longer than any example: none is truncated
    batch = sampler.train_batch(64)
    _check_labels(batch)
    assert (batch["tokens"][:, 0] == ord("#")).all()  # every row starts at an example start
    for tokens, labels in zip(batch["tokens"], batch["labels"]):
        end = int(np.flatnonzero(labels == EOS)[0])  # the example's last label
        assert (labels[end + 1 :] == IGNORE_INDEX).all()  # label `end` is token `end + 1`
        assert tokens[end + 1] == EOS and (tokens[end + 2 :] == 0).all()
    (val,) = sampler.validation_sets(5)
    first = cut_rows(corpus.val[0], corpus.val[0].starts[:5], 64)
    np.testing.assert_array_equal(val["tokens"], first[0])  # the first five examples
    np.testing.assert_array_equal(val["labels"], first[1])
    assert stream.draw_starts(40, 1000, np.random.default_rng(0)).tolist() != []
    assert set(stream.draw_starts(40, 1000, np.random.default_rng(0))) <= set(stream.starts)


# ------------------------------------------------------------------ the loss ignores prompts


def _flip(stream: SFTStream, index: np.ndarray, seed: int = 0) -> SFTStream:
    """``stream`` with the tokens at ``index`` replaced by other ids (same mask, same starts)."""
    tokens = stream.tokens.copy()
    shift = np.random.default_rng(seed).integers(1, 200, size=index.shape[0])
    tokens[index] = ((tokens[index].astype(np.int64) + shift) % 256).astype(tokens.dtype)
    return SFTStream(tokens, stream.loss_mask, stream.starts, stream.layout)


def _masked_tails(stream: SFTStream, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Stream indices after each row's last scored label: never a label, never before one.

    Token ``p`` of a row at ``s`` is the input of position ``p - s`` and the label of position
    ``p - s - 1``; causal attention lets it reach positions ``>= p - s`` only, whose labels
    (indices ``> p``) are all masked here. So these tokens can change no scored loss.
    """
    out = []
    for s in starts:
        q = s + seq_len
        while q > s and not stream.loss_mask[q]:
            q -= 1
        out.extend(range(q + 1, s + seq_len + 1))
    return np.array(out, dtype=np.int64)


def test_flipped_prompt_labels_are_ignored_by_the_sampler():
    stream = build_stream(_records(50), BYTES)
    flipped = _flip(stream, np.flatnonzero(~stream.loss_mask))  # every prompt token
    starts = np.arange(0, len(stream) - 17, 7, dtype=np.int64)
    tokens, labels = cut_rows(stream, starts, 16)
    tokens2, labels2 = cut_rows(flipped, starts, 16)
    assert (tokens != tokens2).any()  # the prompts differ as inputs...
    np.testing.assert_array_equal(labels, labels2)  # ...and are never labels


def test_prompt_tokens_provably_carry_no_loss(kit):
    seq_len = 16
    stream = build_stream(_records(40), BYTES)
    # rows that end 3 tokens into the next example's prompt, after a scored response
    starts = stream.starts[1:-1] + 3 - seq_len
    starts = starts[starts >= 0]
    tails = _masked_tails(stream, starts, seq_len)
    assert tails.size >= 3 * starts.size
    domain = (np.arange(starts.size) % 2).astype(np.int32)

    def batch(s: SFTStream) -> dict:
        tokens, labels = cut_rows(s, starts, seq_len)
        return {"tokens": tokens, "labels": labels, "domain": domain}

    a, b = batch(stream), batch(_flip(stream, tails))
    assert (a["tokens"] != b["tokens"]).any()  # prompt inputs and (masked) labels differ
    gpt = GPTConfig(vocab_size=BYTES.vocab_size, seq_len=seq_len, d_model=32, n_layer=1, n_head=2)
    model = kit.model(gpt, init_gpt_params(gpt, 0), "float32")
    engine = kit.engine(model, toy_config(), 2, 1)

    def measured(x: dict) -> list[np.ndarray]:
        loss, n = kit.losses(model, x)
        stats, _ = engine.measure(Signal.PROXY_LOSSES, x, None, lambda state, s: s)
        twin, _ = engine.measure(Signal.TWIN, x, None, lambda state, s: s)
        parts = [loss, n, engine.evaluate([x]), *stats, *twin.proxy, *twin.reference]
        return [np.asarray(p) for p in parts if p is not None]

    for got, want in zip(measured(b), measured(a), strict=True):
        assert got.tobytes() == want.tobytes()  # bit-identical
    # the control: a flipped response token (a scored label) does change the loss
    response = np.flatnonzero(stream.loss_mask[starts[0] + 1 : starts[0] + seq_len])[:1]
    c = batch(_flip(stream, starts[0] + 1 + response))
    assert kit.losses(model, c)[0][0] != kit.losses(model, a)[0][0]


# ------------------------------------------------------------------ folders and errors


def test_load_folder_reads_sft_domains_and_target(tmp_path):
    (tmp_path / "train").mkdir()
    _write(tmp_path / "train" / "math.jsonl", [r for _, r in _records(10)])
    chat = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "1"}]}
    _write(tmp_path / "train" / "chat.jsonl", [chat] * 5)
    _write(tmp_path / "target.jsonl", [r for _, r in _records(4, seed=2)])
    corpus = load_folder(
        tmp_path / "train", format="sft", target_path=tmp_path / "target.jsonl", seq_len=16
    )
    assert corpus.domains == ("chat", "math") and corpus.val_domains == ("target",)
    assert all(isinstance(s, SFTStream) for s in (*corpus.train, *corpus.val))
    assert corpus.train[0].num_examples == 5 and corpus.vocab_size == BYTES.vocab_size
    split = load_folder(tmp_path / "train", format="sft", val_fraction=0.4, seed=0)
    assert split.val_domains == split.domains
    assert split.train[1].num_examples + split.val[1].num_examples == 10


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a"}', "expected {'prompt', 'response'} or {'messages'}"),
        ('{"messages": [{"role": "user", "content": "a"}]}', "needs an 'assistant' turn"),
        ('{"messages": "a"}', "'messages' must be a list"),
        ('{"prompt": 1, "response": "b"}', "must be strings"),
        ('{"messages": [{"role": "assistant"}]}', "'messages' must be a list"),
        ("[1, 2]", "expected a JSON object"),
        ("{bad", "invalid JSON"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text('{"prompt": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(DataError, match="x.jsonl:3: ") as err:
        load_folder(tmp_path / "d", format="sft")
    assert message in str(err.value)


def test_pad_prompt_longer_than_seq_len_names_the_record(tmp_path):
    (tmp_path / "d").mkdir()
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "a" * 40, "response": "b"}]
    _write(tmp_path / "d" / "x.jsonl", rows)
    with pytest.raises(DataError, match=r"x.jsonl:2: .*data.seq_len=32"):
        load_folder(tmp_path / "d", format="sft", sft_layout="pad", seq_len=32)
    assert load_folder(tmp_path / "d", format="sft", sft_layout="pack", seq_len=32)  # fine packed


def test_sft_folder_needs_jsonl(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"x.txt: data.format='sft' reads .jsonl"):
        load_folder(tmp_path / "d", format="sft")


def test_data_config_format_keys():
    with pytest.raises(ConfigError, match="data.format='sft' reads instruction records"):
        DataConfig(format="sft")
    with pytest.raises(ConfigError, match="data.format='csv' is not one of"):
        DataConfig(format="csv")
    with pytest.raises(ConfigError, match="data.sft_layout='rows' is not one of"):
        DataConfig(sft_layout="rows")
    assert DataConfig(format="sft", path="x", sft_layout="pad").sft_layout == "pad"


# ------------------------------------------------------------------ the "sft" suite end to end


def test_sft_suite_follows_its_rules():
    from tandem_adapters.data import make_suite

    corpus = make_suite("sft", seed=0)
    assert corpus.known_answer["down"] == ["noise"] and corpus.val_domains == ("target",)
    known = corpus.known_answer
    assert set(known["up"]) | set(known["down"]) | set(known["neutral"]) == set(corpus.domains)
    v = corpus.vocab_size
    for stream in corpus.train:
        s, e = int(stream.starts[0]), int(stream.starts[1])
        ex, mask = stream.tokens[s:e], stream.loss_mask[s:e]
        sep = int(np.flatnonzero(ex == v - 2)[0])
        assert ex[-1] == v - 1 and mask.tolist() == [i > sep for i in range(e - s)]
        assert sep == (e - s - 2) // 2  # the response is as long as the prompt
    same = [corpus.train[corpus.domains.index(d)] for d in known["up"]]
    first = [s.tokens[s.starts[0] : s.starts[1]] for s in same]
    assert len({tuple(x) for x in first}) == 2  # different prompts...


# JAX compiles for most of a minute on two cores: slow there, torch takes ~8 s
BACKENDS = [
    pytest.param(b, marks=pytest.mark.slow) if b == "jax" else b for b in installed_backends()
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimize_sft_suite_known_answer(tmp_path, backend, capsys):
    run = tmp_path / "run"
    sets = small_job(
        f"run.backend={backend}",
        f'run.run_dir="{run}"',
        'data.suite="sft"',
        "train.steps=200",
    )
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    doc = json.loads((run / "mixture.json").read_text())
    avg = doc["average"]
    assert avg["noise"] < 1 / 4
    assert avg["target_rule"] + avg["target_skewed"] > 2 / 4
    out = capsys.readouterr().out
    assert "[ok] noise" in out and "[ok] target_rule+target_skewed" in out


@pytest.mark.parametrize("method", ["doremi", "doge", "uniform"])
def test_baselines_run_on_the_sft_suite_unchanged(tmp_path, method):
    run = tmp_path / "run"
    sets = small_job(
        f"run.backend={a_backend()}",
        f'run.run_dir="{run}"',
        'data.suite="sft"',
        f'train.method="{method}"',
        "train.steps=20",
    )
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    doc = json.loads((run / "mixture.json").read_text())
    weights = np.array(list(doc["average"].values()))
    assert np.isfinite(weights).all() and abs(weights.sum() - 1) < 1e-6
    assert all(np.isfinite(v) for v in doc["val_loss"].values())


def test_sft_suite_pad_rows_score_responses_only():
    from tandem_adapters.data import make_suite

    corpus = make_suite("sft", seed=0, sft_layout="pad")
    sampler = TokenSampler(corpus, 16, seed=0)
    sep, eos = corpus.vocab_size - 2, corpus.vocab_size - 1
    for batch in (sampler.train_batch(16), *sampler.validation_sets(8)):
        tokens, labels = batch["tokens"], batch["labels"]
        assert (tokens[:, 0] != sep).all()  # every row starts at a prompt
        for row, lab in zip(tokens, labels):
            at = int(np.flatnonzero(row == sep)[0])  # label j is token j + 1: j >= SEP's index
            scored = np.flatnonzero(lab != IGNORE_INDEX)
            assert scored.min() == at and lab[scored[-1]] == eos  # the response, then EOS
            assert scored.size == scored[-1] - at + 1  # contiguous: nothing past the example


def test_optimize_sft_suite_pad_layout_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    sets = small_job(
        f"run.backend={a_backend()}",
        f'run.run_dir="{run}"',
        'data.suite="sft"',
        'data.sft_layout="pad"',
        "train.steps=200",
    )
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    avg = json.loads((run / "mixture.json").read_text())["average"]
    assert avg["noise"] < 1 / 4
    assert avg["target_rule"] + avg["target_skewed"] > 2 / 4
    assert "[ok] noise" in capsys.readouterr().out


# ------------------------------------------------------------------ resume and the fingerprint


def _stop_after(monkeypatch, rows: int) -> None:
    """SIGTERM this process once the run has logged ``rows`` metrics rows (the CLI's own stop)."""
    import os
    import signal

    from tandem_adapters.run_dir import RunDir

    append = RunDir.append_metrics
    seen = {"n": 0}

    def counting(self, row):
        append(self, row)
        seen["n"] += 1
        if seen["n"] == rows:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RunDir, "append_metrics", counting)


def _run_rows(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


@pytest.mark.parametrize("layout", ["pack", "pad"])
def test_stopped_sft_run_resumes_bitwise(tmp_path, monkeypatch, capsys, layout):
    backend = a_backend()

    def args(run):
        sets = small_job(
            f"run.backend={backend}",
            f'run.run_dir="{run}"',
            'data.suite="sft"',
            f'data.sft_layout="{layout}"',
            "data.suite_tokens_per_domain=4000",
            "train.steps=40",
            "run.checkpoint_every=7",
            "train.probe_steps=3",
            "train.free_steps=4",
            "train.log_every=5",
        )
        return ["optimize", *set_args(*sets), "-q"]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(args(whole)) == 0
    with monkeypatch.context() as m:
        _stop_after(m, 3)
        assert main(args(cut)) != 0  # stopped mid-run, checkpoint saved
    assert "continue with --resume" in capsys.readouterr().err
    assert main([*args(cut), "--resume"]) == 0
    a, b = (json.loads((r / "mixture.json").read_text()) for r in (whole, cut))
    assert a["trajectory"] == b["trajectory"] and a["average"] == b["average"]
    assert _run_rows(whole) == _run_rows(cut)


def test_resume_refuses_sft_data_whose_prompt_response_split_changed(tmp_path, monkeypatch, capsys):
    import tandem_adapters.jobs as jobs

    run = tmp_path / "run"
    sets = small_job(
        f"run.backend={a_backend()}",
        f'run.run_dir="{run}"',
        'data.suite="sft"',
        "data.suite_tokens_per_domain=2000",
        "train.steps=10",
    )
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    make_suite = jobs.make_suite

    def moved(*args, **kwargs):  # the same ids; one more response token is scored
        corpus = make_suite(*args, **kwargs)
        s = corpus.train[0]
        mask = s.loss_mask.copy()
        mask[np.flatnonzero(~mask)[-1]] = True
        stream = SFTStream(s.tokens, mask, s.starts, s.layout)
        return dataclasses.replace(corpus, train=(stream, *corpus.train[1:]))

    monkeypatch.setattr(jobs, "make_suite", moved)
    assert main(["optimize", *set_args(*sets), "-q", "--resume"]) == 1
    err = capsys.readouterr().err
    assert "made from other data" in err and "training domain 'noise': content changed" in err


def test_sft_fingerprint_hashes_the_mask_and_reads_only_samples():
    from tandem_adapters import fingerprint as fp

    stream = build_stream(_records(30), BYTES)
    same = SFTStream(stream.tokens.copy(), stream.loss_mask.copy(), stream.starts)
    assert fp.stream_fingerprint(same) == fp.stream_fingerprint(stream)
    mask = stream.loss_mask.copy()
    mask[np.flatnonzero(mask)[0]] = False  # the same ids, another prompt/response split
    moved = SFTStream(stream.tokens, mask, stream.starts)
    assert fp.stream_fingerprint(moved) != fp.stream_fingerprint(stream)
    assert fp.stream_fingerprint(stream)[0] == len(stream)
    plain = fp.stream_fingerprint(stream.tokens)  # a plain stream's hash is unchanged
    assert plain == fp.stream_fingerprint(np.asarray(stream.tokens, dtype=np.int64))

    class Reads:
        """An array that counts the elements read through it."""

        def __init__(self, a):
            self.a, self.shape, self.read = a, a.shape, 0

        def __getitem__(self, key):
            out = self.a[key]
            self.read += np.size(out)
            return out

    n = 1 << 22  # large: 4 MiB of ids, sampled
    big = SFTStream(np.zeros(n, np.uint16), np.arange(n) % 3 > 0, np.arange(0, n, 3))
    big.tokens, big.loss_mask = Reads(big.tokens), Reads(big.loss_mask)
    fp.stream_fingerprint(big)
    limit = fp.SAMPLE_BLOCKS * fp.BLOCK_BYTES // 8
    assert 0 < big.tokens.read <= limit and 0 < big.loss_mask.read <= limit


# ------------------------------------------------------------------ ADAPT, TaskPGM, folders


def test_train_with_adapt_weights_on_the_sft_suite(tmp_path, capsys):
    backend, mix, run = a_backend(), tmp_path / "mix", tmp_path / "train"
    base = [
        f"run.backend={backend}",
        'data.suite="sft"',
        'data.suite_val="per_domain"',
        "data.suite_tokens_per_domain=4000",
    ]
    sets = small_job(*base, f'run.run_dir="{mix}"', "train.steps=10")
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    sets = small_job(*base, f'run.run_dir="{run}"', "train.steps=20")
    argv = ["train", "--mixture", str(mix), "--weighting", "adapt", *set_args(*sets), "-q"]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "adapt weights" in out
    table = out.split("validation loss per domain:")[1].splitlines()[1:6]
    losses = {line.split()[0]: float(line.split()[1]) for line in table}
    assert set(losses) == {"noise", "other_rule", "target_rule", "target_skewed", "average"}
    assert all(np.isfinite(v) for v in losses.values())


def _sft_folder(root) -> None:
    """Two instruction tasks (one as chat records) and a target set, as .jsonl (byte ids)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), size=4)) for _ in range(60)]
    chat = [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w.upper()}]}
        for w in words
    ]
    (root / "tasks").mkdir(parents=True)
    _write(root / "tasks" / "digits.jsonl", [r for _, r in _records(60)])
    _write(root / "tasks" / "upper.jsonl", chat)
    _write(root / "target.jsonl", [r for _, r in _records(20, seed=5)])


def _folder_job(run, steps: int, *extra: str) -> list[str]:
    """``--set`` arguments of a small job on SFT records (T = 48 fits every padded prompt)."""
    sets = small_job(
        f"run.backend={a_backend()}",
        f'run.run_dir="{run}"',
        'data.format="sft"',
        "data.seq_len=48",
        f"train.steps={steps}",
        *extra,
    )
    return [*set_args(*sets), "-q"]


@pytest.mark.parametrize("layout", ["pack", "pad"])
def test_sft_folder_end_to_end(tmp_path, capsys, layout):
    _sft_folder(tmp_path)
    tasks, target = tmp_path / "tasks", tmp_path / "target.jsonl"
    data = [f'data.path="{tasks}"', f'data.sft_layout="{layout}"']
    opt = _folder_job(tmp_path / "opt", 20, *data, f'data.target_path="{target}"')
    assert main(["optimize", *opt]) == 0
    doc = json.loads((tmp_path / "opt" / "mixture.json").read_text())
    assert set(doc["average"]) == {"digits", "upper"} and doc["val_domains"] == ["target"]
    capsys.readouterr()
    train = _folder_job(tmp_path / "train", 10, *data, "data.val_fraction=0.2")
    assert main(["train", "--mixture", str(tmp_path / "opt"), *train]) == 0
    out = capsys.readouterr().out.split("validation loss per domain:")[1].splitlines()
    losses = {line.split()[0]: float(line.split()[1]) for line in out[1:4]}
    assert set(losses) == {"digits", "upper", "average"}
    assert all(np.isfinite(v) for v in losses.values())


def test_taskpgm_on_sft_tasks_and_an_sft_probe(tmp_path, capsys):
    pytest.importorskip("torch")
    _sft_folder(tmp_path)
    run = tmp_path / "pgm"
    pgm = ["run.backend=torch", "taskpgm.finetune_steps=5", "taskpgm.probe_max_per_task=8"]
    argv = ["taskpgm", "--tasks", str(tmp_path / "tasks"), *_folder_job(run, 1, *pgm)]
    assert main(argv) == 0  # the probe: 10% of each task's records, held out
    details = json.loads((run / "taskpgm.json").read_text())
    assert details["tasks"] == ["digits", "upper"] and details["probe"]["tokens"] > 0
    assert all(np.isfinite(v) for v in details["task_loss"].values())
    # a probe file of instruction records is read as SFT (prompts carry no loss), not as text
    assert main([*argv, "--probe", str(tmp_path / "target.jsonl"), "--overwrite"]) == 0
    details = json.loads((run / "taskpgm.json").read_text())
    assert details["probe"]["groups"] == ["target"]
    target = load_folder(tmp_path / "tasks", format="sft", target_path=tmp_path / "target.jsonl")
    target = target.val[0]
    rows = cut_rows(target, target.first_starts(48, 8), 48)[1]
    assert details["probe"]["tokens"] == int((rows != IGNORE_INDEX).sum())


def test_adapt_anchor_of_instruction_records_is_read_as_sft(tmp_path, capsys):
    from tandem_adapters import jobs
    from tandem_adapters.config import JobConfig

    _sft_folder(tmp_path)
    target = tmp_path / "target.jsonl"
    data = {"format": "sft", "seq_len": 48, "path": str(tmp_path)}
    cfg = JobConfig.from_mapping({"run": {"backend": a_backend()}, "data": data})
    (stream,) = jobs._read_streams(cfg, target)
    assert not np.asarray(stream.loss_mask[: stream.shape[0]]).all()  # prompts: no loss
    data = [f'data.path="{tmp_path / "tasks"}"', "data.val_fraction=0.2"]
    opt = _folder_job(tmp_path / "opt", 10, *data)
    assert main(["optimize", *opt]) == 0
    train = _folder_job(tmp_path / "train", 10, *data)
    argv = ["train", "--mixture", str(tmp_path / "opt"), "--weighting", "adapt"]
    assert main([*argv, "--anchor", str(target), *train]) == 0
    assert "validation loss per domain" in capsys.readouterr().out
