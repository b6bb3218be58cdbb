r"""Supervised fine-tuning data: instruction records -> ``SFTStream`` (ids + loss mask) per domain.

Records are ``.jsonl`` lines, one of two forms:

- ``{"prompt": "...", "response": "..."}``;
- ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}, ...]}``
  (at least one ``assistant`` turn).

Tokenization (the loss covers the response, or the assistant turns, only):

- A tokenizer with a chat template (a Hugging Face tokenizer whose ``chat_template`` is set):
  the template renders the conversation (a prompt/response record is one user and one assistant
  turn); the tokens each assistant turn adds after the generation prompt carry the loss. No EOS
  is appended (templates end their turns themselves).
- Otherwise the plain template: ``"### Prompt:\n{prompt}\n### Response:\n"`` (no loss), then
  ``{response}`` and EOS (loss). Chat records: each turn is ``"{role}: {content}\n"``; the
  content and newline of assistant turns carry the loss, and EOS after the last turn carries it
  when that turn is the assistant's. Pieces are tokenized separately and joined, so a subword
  tokenizer may split at a piece boundary differently than on the joined text.

Layouts (``data.sft_layout``):

- ``"pack"``: examples joined into one stream; rows start anywhere, the mask removes prompt tokens.
- ``"pad"``: each row starts at an example start and is padded past the example's end (token 0,
  label ``IGNORE_INDEX``); rows are drawn uniformly over examples, validation rows are the first
  examples. An example longer than ``T + 1`` tokens is truncated to its row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem_core import IGNORE_INDEX

from .corpus import DataError, DomainCorpus
from .formats import read_text_lines
from .text import json_record
from .tokenizer import load_tokenizer
from .windows import random_starts, sequential_starts, windows

__all__ = [
    "LAYOUTS",
    "SFTStream",
    "build_sft_corpus",
    "build_stream",
    "encode_record",
    "load_sft_tokenizer",
    "read_records",
]

LAYOUTS = ("pack", "pad")
PROMPT_TEMPLATE = "### Prompt:\n{prompt}\n### Response:\n"
Record = tuple[str, dict]  # (where = "file:line", the JSON object)


class SFTStream:
    """One domain's examples: token ids, a parallel loss mask, example starts (a stream object).

    Implements the ``data.windows`` stream hooks (``loss_mask``, ``windows``, ``draw_starts``,
    ``first_starts``), so ``TokenSampler`` cuts its rows.

    Args:
        tokens: ids ``(n,)``, uint16 or uint32.
        loss_mask: bool ``(n,)``; ``False``: the token is never a label (prompt, template).
        starts: int64 ``(E,)`` increasing example starts, ``starts[0] == 0``.
        layout: one of ``LAYOUTS``.
        where: ``(E,)`` the ``file:line`` of each example (for errors).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        loss_mask: np.ndarray,
        starts: np.ndarray,
        layout: str = "pack",
        where: Sequence[str] = (),
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"sft layout must be one of {LAYOUTS}, got {layout!r}")
        self.tokens, self.loss_mask = tokens, loss_mask.astype(bool)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.append(self.starts[1:], tokens.shape[0])
        self.layout, self.where = layout, tuple(where)
        self.shape, self.ndim, self.dtype = tokens.shape, 1, tokens.dtype
        # offset of each example's first scored token: a "pad" row must reach it
        scored = np.flatnonzero(self.loss_mask)
        first = scored[np.minimum(np.searchsorted(scored, self.starts), max(scored.size - 1, 0))]
        self.first_label = np.where(scored.size > 0, first - self.starts, self.ends - self.starts)
        self._fits: set[int] = set()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index: Any) -> Any:
        return self.tokens[index]

    @property
    def num_examples(self) -> int:
        """E, the number of examples."""
        return int(self.starts.shape[0])

    def check_fits(self, seq_len: int) -> None:
        """``"pad"``: every example's first response token is a label of its row of T tokens.

        Raises:
            DataError: names the ``file:line`` of the first example whose prompt fills the row.
        """
        if self.layout != "pad" or seq_len in self._fits:
            return
        bad = np.flatnonzero(self.first_label > seq_len)  # label j = token j + 1, j < T
        if bad.size:
            k = int(bad[0])
            where = self.where[k] if k < len(self.where) else f"example {k}"
            raise DataError(
                f"{where}: the prompt takes {int(self.first_label[k])} tokens, so no response "
                f"token is a label within data.seq_len={seq_len} (sft_layout='pad'); shorten "
                "the prompt, raise data.seq_len, or use sft_layout='pack'"
            )
        self._fits.add(seq_len)

    def windows(self, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows at ``starts (B,)``: int32 ``(B, T)`` tokens and labels (``data.windows.windows``).

        ``"pad"`` rows stop at their example's end: later positions are token 0 and label
        ``IGNORE_INDEX``, so one example never sees the next.
        """
        tokens, labels = windows(self.tokens, starts, seq_len)
        if self.layout == "pack":
            return tokens, labels
        self.check_fits(seq_len)
        end = self.ends[np.searchsorted(self.starts, starts, side="right") - 1]
        offsets = starts[:, None] + np.arange(seq_len + 1)
        inside = offsets < end[:, None]
        tokens = np.where(inside[:, :-1], tokens, 0).astype(np.int32)
        labels = np.where(inside[:, 1:], labels, IGNORE_INDEX).astype(np.int32)
        return tokens, labels

    def draw_starts(self, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` starts: uniform over examples (``"pad"``), else uniform windows."""
        if self.layout == "pack":
            return random_starts(len(self), seq_len, count, rng)
        self.check_fits(seq_len)
        return self.starts[rng.integers(0, self.num_examples, size=count)]

    def first_starts(self, seq_len: int, max_rows: int) -> np.ndarray:
        """Validation starts: the first examples (``"pad"``), else the first windows."""
        if self.layout == "pack":
            return sequential_starts(len(self), seq_len, max_rows)
        self.check_fits(seq_len)
        return self.starts[:max_rows]

    def __repr__(self) -> str:
        return f"SFTStream({self.num_examples} examples, {len(self)} tokens, {self.layout!r})"


# ------------------------------------------------------------------ records


def read_records(path: Path) -> list[Record]:
    """The instruction records of a ``.jsonl`` file as ``(file:line, object)``; blank lines skipped.

    Raises:
        DataError: ``file:line`` of a line that is not a JSON object; not a ``.jsonl`` file.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: data.format='sft' reads .jsonl instruction records only")
    out = []
    for lineno, line in read_text_lines(path):
        if not line.strip():
            continue
        out.append((f"{path}:{lineno}", json_record(path, lineno, line)))
    return out


def _messages(where: str, record: dict) -> list[dict]:
    """The record as chat turns (a prompt/response record is one user and one assistant turn)."""
    if "messages" in record:
        turns = record["messages"]
        ok = isinstance(turns, list) and all(
            isinstance(t, dict)
            and isinstance(t.get("role"), str)
            and isinstance(t.get("content"), str)
            for t in turns
        )
        if not ok:
            raise DataError(
                f"{where}: 'messages' must be a list of {{'role': str, 'content': str}} objects"
            )
        if not any(t["role"] == "assistant" for t in turns):
            raise DataError(f"{where}: a chat record needs an 'assistant' turn (nothing to learn)")
        return [{"role": t["role"], "content": t["content"]} for t in turns]
    if "prompt" in record and "response" in record:
        prompt, response = record["prompt"], record["response"]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{where}: 'prompt' and 'response' must be strings")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    keys = sorted(record)[:10]
    raise DataError(
        f"{where}: expected {{'prompt', 'response'}} or {{'messages'}} (an instruction record), "
        f"got keys {keys}"
    )


def _has_chat_template(tokenizer: Any) -> bool:
    return callable(getattr(tokenizer, "apply_chat_template", None)) and bool(
        getattr(tokenizer, "chat_template", None)
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Ids of ``text`` without special tokens (a Hugging Face tokenizer would add BOS)."""
    if not text:
        return []
    if callable(getattr(tokenizer, "apply_chat_template", None)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def eos_of(tokenizer: Any) -> int | None:
    """The end-of-example id: ``eos_id`` (tandem tokenizers) or ``eos_token_id`` (HF)."""
    if hasattr(tokenizer, "eos_id"):
        return tokenizer.eos_id
    return getattr(tokenizer, "eos_token_id", None)


def vocab_of(tokenizer: Any) -> int:
    """Id space size: ``len(tokenizer)`` for HF (counts added tokens), else ``vocab_size``."""
    if callable(getattr(tokenizer, "apply_chat_template", None)):
        return int(len(tokenizer))
    return int(tokenizer.vocab_size)


def _plain(tokenizer: Any, record: dict, turns: list[dict]) -> tuple[list[int], list[bool]]:
    """The plain template (module docstring): ``(ids, loss mask)``."""
    eos = eos_of(tokenizer)
    end = [] if eos is None else [eos]
    if "messages" not in record:
        head = _encode(tokenizer, PROMPT_TEMPLATE.format(prompt=turns[0]["content"]))
        tail = _encode(tokenizer, turns[1]["content"]) + end
        return head + tail, [False] * len(head) + [True] * len(tail)
    ids: list[int] = []
    mask: list[bool] = []
    for turn in turns:
        head = _encode(tokenizer, f"{turn['role']}: ")
        body = _encode(tokenizer, turn["content"] + "\n")
        scored = turn["role"] == "assistant"
        ids += head + body
        mask += [False] * len(head) + [scored] * len(body)
    return ids + end, mask + [turns[-1]["role"] == "assistant"] * len(end)


def _templated(where: str, tokenizer: Any, turns: list[dict]) -> tuple[list[int], list[bool]]:
    """The tokenizer's chat template: each assistant turn's tokens after its generation prompt.

    Renders growing prefixes of the conversation; a template whose rendering of a prefix is not
    a prefix of the next (e.g. one that edits earlier turns) cannot be masked this way.
    """

    def render(k: int, generation: bool) -> list[int]:
        out = tokenizer.apply_chat_template(
            turns[:k], tokenize=True, add_generation_prompt=generation
        )
        out = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(i) for i in out]

    ids: list[int] = []
    mask: list[bool] = []
    for k, turn in enumerate(turns, start=1):
        before = (
            render(k - 1, turn["role"] == "assistant")
            if k > 1 or turn["role"] == "assistant"
            else []
        )
        full = render(k, False)
        for part in (before, full):
            if part[: len(ids)] != ids:
                raise DataError(
                    f"{where}: the chat template does not render this conversation turn by turn "
                    "(a prefix changes when a turn is added), so assistant turns cannot be masked"
                )
        mask += [False] * (len(before) - len(ids))
        mask += [turn["role"] == "assistant"] * (len(full) - len(before))
        ids = full
    return ids, mask


def encode_record(where: str, record: dict, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """One instruction record as ``(ids, loss mask)`` of equal length (module docstring).

    Args:
        where: ``file:line`` of the record, for errors.
        record: ``{"prompt", "response"}`` or ``{"messages"}``.
        tokenizer: a tandem tokenizer (``encode``, ``eos_id``) or a Hugging Face tokenizer.

    Raises:
        DataError: neither form, a chat record without an assistant turn, or no scored token.
    """
    turns = _messages(where, record)
    if _has_chat_template(tokenizer):
        ids, mask = _templated(where, tokenizer, turns)
    else:
        ids, mask = _plain(tokenizer, record, turns)
    if not any(mask):
        raise DataError(f"{where}: the response is empty (no token carries the loss)")
    return ids, mask


def build_stream(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    layout: str = "pack",
    seq_len: int | None = None,
    dtype: Any = np.uint16,
) -> SFTStream:
    """Tokenize ``records`` into one ``SFTStream`` (examples in order).

    Args:
        records: ``(file:line, object)`` pairs (``read_records``).
        tokenizer: see ``encode_record``.
        layout: ``"pack"`` or ``"pad"``.
        seq_len: T; with ``"pad"``, checked now so a too-long prompt fails at load time.
        dtype: integer dtype of the ids.

    Raises:
        DataError: a bad record (``file:line``), or no records.
    """
    if not records:
        raise DataError("no instruction records")
    encoded = [encode_record(where, rec, tokenizer) for where, rec in records]
    lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
    tokens = np.fromiter(
        (i for ids, _ in encoded for i in ids), dtype=np.int64, count=lengths.sum()
    )
    mask = np.fromiter((m for _, ms in encoded for m in ms), dtype=bool, count=lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    stream = SFTStream(tokens.astype(dtype), mask, starts, layout, [w for w, _ in records])
    if seq_len is not None:
        stream.check_fits(seq_len)
    return stream


def build_sft_corpus(
    train: dict[str, list],
    val: dict[str, list],
    *,
    tokenizer: Any = None,
    layout: str = "pack",
    seq_len: int | None = None,
    vocab_size: int | None = None,
) -> DomainCorpus:
    """One ``SFTStream`` per domain from ``{domain: [(where, records), ...]}`` parts.

    Args:
        train: domain -> parts; a part is ``(where, list of (file:line, record))``.
        val: validation domain -> parts (may be empty).
        tokenizer: None (``ByteTokenizer``), or see ``encode_record``.
        layout: ``"pack"`` or ``"pad"``.
        seq_len: T, checked for ``"pad"``.
        vocab_size: explicit id space (>= the tokenizer's).

    Raises:
        DataError: an empty domain, a bad record, ``vocab_size`` below the tokenizer's.
    """
    tokenizer = load_tokenizer(None) if tokenizer is None else tokenizer
    vocab = vocab_of(tokenizer) if vocab_size is None else int(vocab_size)
    if vocab < vocab_of(tokenizer):
        raise DataError(f"vocab_size={vocab} is smaller than the tokenizer's {vocab_of(tokenizer)}")
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32

    def stream(name: str, kind: str, parts: list) -> SFTStream:
        records = [r for _, recs in parts for r in recs]
        if not records:
            sources = ", ".join(w for w, _ in parts) or "no files"
            raise DataError(f"{kind} domain {name!r} is empty: no records in {sources}")
        return build_stream(records, tokenizer, layout=layout, seq_len=seq_len, dtype=dtype)

    return DomainCorpus(
        domains=tuple(train),
        train=tuple(stream(n, "training", p) for n, p in train.items()),
        val_domains=tuple(val),
        val=tuple(stream(n, "validation", p) for n, p in val.items()),
        vocab_size=vocab,
    )


def load_sft_tokenizer(path: str | Path | None) -> Any:
    """A local tokenizer for SFT: a HF folder with a chat template, else ``load_tokenizer(path)``.

    Nothing is downloaded.
    A folder whose ``tokenizer_config.json`` holds a ``chat_template`` (or that has a
    ``chat_template.jinja``) is read with ``transformers.PreTrainedTokenizerFast`` so its
    template tokenizes the conversations.
    """
    if path is not None and Path(path).is_dir():
        folder = Path(path)
        config = folder / "tokenizer_config.json"
        templated = (folder / "chat_template.jinja").is_file() or (
            config.is_file() and "chat_template" in json.loads(config.read_text(encoding="utf-8"))
        )
        if templated:
            try:
                from transformers import PreTrainedTokenizerFast
            except ImportError as err:  # optional: only a chat template needs it
                raise ImportError(
                    f"{folder} has a chat template; reading it needs `transformers`"
                ) from err
            return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return load_tokenizer(path)
