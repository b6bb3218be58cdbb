"""The synthetic instruction-tuning suite ``"sft"``: prompt -> response tasks with a known answer.

Every example is ``prompt SEP response EOS`` over a small vocabulary (``SEP = V - 2``,
``EOS = V - 1``, content tokens ``[0, V - 2)``); only ``response EOS`` carries the loss
(``SFTStream``'s mask). Prompts have 3 to 6 tokens, responses as many. A rule is a seeded
permutation ``f`` of the content tokens applied as a chain: ``r_0 = f(p_last)``,
``r_i = f(r_{i-1})`` (learnable by a one-layer model in a few hundred steps, so the known answer
shows within a short run). Four training tasks:

- ``target_rule``: the target rule, prompts with uniform tokens;
- ``target_skewed``: the same rule on another prompt distribution (1/rank token frequencies);
- ``other_rule``: another permutation on the same prompts (a conflicting rule);
- ``noise``: the same prompts, responses i.i.d. uniform tokens (nothing to learn; only the
  response differs from the other tasks).

Validation: ``"target"`` is fresh ``target_rule`` examples; ``"per_domain"`` fresh examples of
each task. ``known_answer``: ``up`` = the two tasks that follow the target rule, ``down`` =
``noise``, ``neutral`` = ``other_rule``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .corpus import DomainCorpus
from .sft import LAYOUTS, SFTStream

__all__ = ["TASKS", "make_sft_suite"]

TASKS = ("noise", "other_rule", "target_rule", "target_skewed")
MIN_LEN, MAX_LEN = 3, 6  # prompt lengths
Respond = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # prompt (L,) -> response (L,)


def _chain(step: np.ndarray) -> Respond:
    """Response ``r_0 = step[p_last]``, ``r_i = step[r_{i-1}]``, as long as the prompt."""

    def respond(prompt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty_like(prompt)
        token = prompt[-1]
        for i in range(prompt.shape[0]):
            token = out[i] = step[token]
        return out

    return respond


def _rules(content: int, seed: int) -> dict[str, tuple[str, Respond]]:
    """Task -> (prompt distribution, response rule); the two maps are seeded permutations."""
    rng = np.random.default_rng([seed, 1])
    target, other = rng.permutation(content), rng.permutation(content)
    return {
        "target_rule": ("uniform", _chain(target)),
        "target_skewed": ("skewed", _chain(target)),
        "other_rule": ("uniform", _chain(other)),
        "noise": ("uniform", lambda p, r: r.integers(0, content, size=p.shape[0])),
    }


def _prompt_probs(content: int, kind: str, seed: int) -> np.ndarray:
    """Token frequencies of prompts ``(C,)``: uniform, or 1/rank over a seeded token order."""
    if kind == "uniform":
        return np.full(content, 1.0 / content)
    order = np.random.default_rng([seed, 0]).permutation(content)
    p = np.empty(content)
    p[order] = 1.0 / np.arange(1, content + 1)
    return p / p.sum()


def _examples(
    task: str, tokens: int, vocab_size: int, seed: int, rng: np.random.Generator
) -> SFTStream:
    """Examples of ``task`` until ``tokens`` ids: ``prompt SEP response EOS`` (pack layout)."""
    content = vocab_size - 2
    kind, respond = _rules(content, seed)[task]
    probs = _prompt_probs(content, kind, seed)
    ids: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    total = 0
    while total < tokens:
        prompt = rng.choice(content, size=int(rng.integers(MIN_LEN, MAX_LEN + 1)), p=probs)
        response = respond(prompt, rng)
        ids.append(np.concatenate([prompt, [content], response, [content + 1]]))
        masks.append(np.arange(ids[-1].shape[0]) > prompt.shape[0])  # after SEP
        total += ids[-1].shape[0]
    lengths = np.array([x.shape[0] for x in ids])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return SFTStream(np.concatenate(ids).astype(np.uint16), np.concatenate(masks), starts)


def make_sft_suite(
    *,
    seed: int = 0,
    vocab_size: int = 32,
    tokens_per_domain: int = 20000,
    val: str = "target",
    val_tokens: int | None = None,
    layout: str = "pack",
) -> DomainCorpus:
    """The ``"sft"`` suite (module docstring): one ``SFTStream`` per task.

    Args:
        seed: everything is a deterministic function of it.
        vocab_size: V >= 8 (``V - 2`` content tokens, SEP, EOS).
        tokens_per_domain: training tokens of each task (whole examples, so slightly more).
        val: ``"target"`` or ``"per_domain"``.
        val_tokens: tokens per validation stream (default ``tokens_per_domain // 4``).
        layout: ``"pack"`` or ``"pad"`` (``SFTStream``).

    Returns:
        The corpus with ``known_answer``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    val_tokens = tokens_per_domain // 4 if val_tokens is None else int(val_tokens)

    # One independent stream per (task, split), like the other suites.
    def stream(task: str, split: int, n: int) -> SFTStream:
        rng = np.random.default_rng([seed, 1 + split, *task.encode("utf-8")])
        s = _examples(task, n, vocab_size, seed, rng)
        return SFTStream(s.tokens, s.loss_mask, s.starts, layout)

    train = tuple(stream(t, 0, tokens_per_domain) for t in TASKS)
    names = ("target",) if val == "target" else TASKS
    sources = ("target_rule",) if val == "target" else TASKS
    known = {
        "up": ["target_rule", "target_skewed"],
        "down": ["noise"],
        "neutral": ["other_rule"],
        "noise": "noise",
        "target": "target_rule",
        "uniform_entropy": math.log(vocab_size - 2),
    }
    val_streams = tuple(stream(t, 1, val_tokens) for t in sources)
    return DomainCorpus(TASKS, train, names, val_streams, vocab_size, known)
