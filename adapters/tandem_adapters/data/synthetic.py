"""Built-in synthetic suites with a known answer (planted domains), for demos, tests and benchmarks.

All domains are drawn around one *target generator*: a sparse order-1 Markov chain over a
small vocabulary (each token has a few likely successors, ``markov.random_chain``).

- ``"planted"``: five training domains of ``tokens_per_domain`` tokens each:
  ``target_like`` (samples of the target chain), ``related`` (the chain with a share of its
  rows mixed half-and-half with random rows), ``noise`` (i.i.d. uniform tokens), ``easy`` (a
  short repeated pattern: trivially learnable, unlike the target) and ``restricted`` (a few
  target sequences repeated many times). A good mixture for the target puts most weight on
  ``target_like`` and little on ``noise`` and ``easy``.
- ``"restricted"``: the data-restricted scenario (TANDEM paper): a SMALL target-like domain
  ``restricted`` (``tokens_per_domain // 8`` tokens of a few repeated sequences) next to full-size
  off-target domains ``related``, ``noise``, ``easy``. A learned mixture should beat uniform
  by moving weight from ``noise``/``easy`` to ``restricted`` (and ``related``).

- ``"sft"``: instruction tasks (prompt -> response rules, loss on responses only), built by
  ``sft_suite.make_sft_suite``; see that module for its domains and known answer.

Validation (``val=``): ``"target"`` (default) is a separate target set ``("target",)`` of fresh
target-chain samples; ``"per_domain"`` gives each domain its own fresh validation stream.

``known_answer`` keys: ``down`` (each of these gets less than the uniform weight ``1/M`` in a
good mixture), ``up`` (these together get more than their uniform share ``len(up)/M``),
``neutral`` (no claim), ``noise``, ``target`` (the most target-like domain),
``target_entropy`` (entropy rate of the target chain: the best achievable target loss, nats)
and ``uniform_entropy`` (``log V``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import markov
from .corpus import DomainCorpus
from .realtext import make_realtext_suite
from .sft_suite import make_sft_suite

__all__ = ["available_suites", "make_suite"]

Generator = Callable[[int, np.random.Generator], np.ndarray]  # (n, rng) -> uint16 (n,)
VAL_MODES = ("target", "per_domain")


def _generators(seed: int, vocab_size: int, related_fraction: float) -> tuple[dict, np.ndarray]:
    """The target chain and one token generator per kind of domain."""
    rng = np.random.default_rng([seed, 0])  # structure (chains, patterns), not samples
    chain = markov.random_chain(vocab_size, rng)
    related = markov.perturb_chain(chain, related_fraction, rng)
    pattern = rng.permutation(vocab_size)[:5]
    cycle = markov.repeated_sequences(chain, 8, 32, rng)  # 256 distinct windows in all
    gens: dict[str, Generator] = {
        "target_like": lambda n, r: markov.sample_chain(chain, n, r),
        "related": lambda n, r: markov.sample_chain(related, n, r),
        "noise": lambda n, r: markov.iid_tokens(vocab_size, n, r),
        "easy": lambda n, r: markov.pattern_tokens(pattern, n, int(r.integers(5))),
        "restricted": lambda n, r: markov.pattern_tokens(cycle, n, int(r.integers(cycle.size))),
    }
    return gens, chain


def _suite(name: str, tokens: int) -> tuple[dict[str, int], dict]:
    """Domain -> training tokens, and the claims of ``known_answer`` for suite ``name``."""
    if name == "planted":
        sizes = dict.fromkeys(("easy", "noise", "related", "restricted", "target_like"), tokens)
        claims = {"up": ["target_like"], "down": ["noise", "easy"], "target": "target_like"}
        claims["neutral"] = ["related", "restricted"]
    else:  # "restricted": the target-like domain is small and repetitive
        sizes = {"easy": tokens, "noise": tokens, "related": tokens, "restricted": tokens // 8}
        claims = {"up": ["related", "restricted"], "down": ["noise", "easy"], "neutral": []}
        claims["target"] = "restricted"
    return sizes, {**claims, "noise": "noise"}


# "sft": instruction tasks (data.sft_suite); "realtext": the machine's own text (data.realtext)
SUITES = ("planted", "restricted", "sft", "realtext")


def available_suites() -> tuple[str, ...]:
    """Names accepted by ``make_suite``."""
    return SUITES


def make_suite(
    name: str = "planted",
    *,
    seed: int = 0,
    vocab_size: int = 32,
    tokens_per_domain: int = 20000,
    val: str = "target",
    val_tokens: int | None = None,
    related_fraction: float = 0.3,
    sft_layout: str = "pack",
) -> DomainCorpus:
    """A synthetic ``DomainCorpus`` with a known answer (see the module docstring).

    Args:
        name: one of ``available_suites()``.
        seed: everything (chains, patterns, samples) is a deterministic function of it.
        vocab_size: V >= 8; tokens are uint16 in ``[0, V)``.
        tokens_per_domain: training tokens of each full-size domain (>= 1024).
        val: ``"target"`` (one target set) or ``"per_domain"`` (one stream per domain).
        val_tokens: tokens per validation stream (default ``tokens_per_domain // 4``).
        related_fraction: share of the target chain's rows perturbed in ``related``.
        sft_layout: the ``"sft"`` suite's rows: ``"pack"`` or ``"pad"`` (see ``data.sft``).

    Returns:
        The corpus, with ``known_answer`` filled in.

    Raises:
        ValueError: unknown ``name`` or ``val``, or sizes out of range.
    """
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; available: {SUITES}")
    if val not in VAL_MODES:
        raise ValueError(f"val must be one of {VAL_MODES}, got {val!r}")
    if vocab_size < 8 or vocab_size > 1 << 16:
        raise ValueError(f"vocab_size must be in [8, 65536], got {vocab_size}")
    if tokens_per_domain < 1024:
        raise ValueError(f"tokens_per_domain must be >= 1024, got {tokens_per_domain}")
    if not 0.0 <= related_fraction <= 1.0:
        raise ValueError(f"related_fraction must be in [0, 1], got {related_fraction}")
    val_tokens = tokens_per_domain // 4 if val_tokens is None else int(val_tokens)
    if val_tokens < 2:
        raise ValueError(f"val_tokens must be >= 2, got {val_tokens}")
    if name == "realtext":  # bytes of text per domain; byte tokens: vocab_size does not apply
        sizes = dict(tokens_per_domain=tokens_per_domain, val_tokens=val_tokens)
        return make_realtext_suite(seed=seed, val=val, **sizes)
    if name == "sft":
        sizes = dict(tokens_per_domain=tokens_per_domain, val_tokens=val_tokens)
        return make_sft_suite(seed=seed, vocab_size=vocab_size, val=val, layout=sft_layout, **sizes)
    gens, chain = _generators(seed, vocab_size, related_fraction)
    sizes, claims = _suite(name, tokens_per_domain)

    # One independent sample stream per (domain, split): resizing one never shifts another.
    def rng(domain: str, split: int) -> np.random.Generator:
        return np.random.default_rng([seed, 1 + split, *domain.encode("utf-8")])

    train = tuple(gens[d](n, rng(d, 0)) for d, n in sizes.items())
    if val == "target":
        val_domains: tuple[str, ...] = ("target",)
        val_streams = (gens["target_like"](val_tokens, rng("target", 1)),)
    else:
        val_domains = tuple(sizes)
        val_streams = tuple(gens[d](val_tokens, rng(d, 1)) for d in sizes)
    known = {
        **claims,
        "target_entropy": markov.entropy_rate(chain),
        "uniform_entropy": math.log(vocab_size),
    }
    return DomainCorpus(tuple(sizes), train, val_domains, val_streams, vocab_size, known)
