"""Known-answer suites for data curation: a labelled sample pool (ADAPT), related tasks (TaskPGM).

Both are built from sparse order-1 Markov chains (``markov.random_chain``), like the planted
suites, and are a deterministic function of ``seed``.

``make_pool_suite``: the pool ADAPT reweights (docs/methods.md, "ADAPT"). A vocabulary of 48
tokens: 16 shared (0-15), 16 of topic A (16-31), 16 of topic B (32-47). The target is a chain over
the shared and topic-A tokens. Four sources of ``tokens_per_source`` tokens each, every window of
a source carrying that source's label:

- ``target`` (in-distribution): samples of the target chain;
- ``conflict`` (off-target): another chain over the same 32 tokens (the target's vocabulary,
  other transitions: it teaches wrong successors);
- ``offtopic`` (off-target): a chain over the shared and topic-B tokens (another domain);
- ``noise`` (off-target): i.i.d. uniform tokens over all 48.

So a quarter of the pool is in-distribution. The sources are the corpus's domains: a run with a
uniform fixed mixture (``batch_per_domain`` rows of each) is one pool of fixed composition, and a
per-sample method never reads the domain, so the domains are the samples' hidden labels (the
mean ADAPT weight per domain is the mean weight per label). Validation is a ``target`` set of
fresh target-chain samples; ``anchor`` is a separate target-chain stream (ADAPT's anchor set:
the evaluation set is never an anchor).

``make_task_suite``: tasks for TaskPGM (docs/methods.md, "TaskPGM") over 32 tokens, sizes in
units of ``unit_tokens``:

- ``a`` (4 units) and ``a_dup`` (4 units): independent samples of one chain, near-duplicate tasks
  that should share one task's weight;
- ``b`` (1 unit) and ``c`` (2 units): two more useful chains, of other sizes;
- ``conflict`` (2 units): an unrelated chain over the same tokens (not in the target);
- ``noise`` (4 units): i.i.d. uniform tokens (harmful: nothing to learn, and it dilutes).

The target is a held-out equal mix of the useful tasks, given as three validation streams
``target_a``, ``target_b``, ``target_c`` (fresh samples of chains a, b and c; the target loss is
their mean). A good mixture puts about 1/3 on each useful chain (``a`` and ``a_dup`` together),
nothing on ``conflict`` and ``noise``; uniform gives the harmful tasks 1/3 and the ``a`` chain
1/3, size-proportional gives them 6/17 and starves ``b`` (1/17).

``known_answer`` keys: pool: ``in_distribution``, ``off_target`` (source names),
``in_share`` (0.25), ``target_entropy`` (nats, the best achievable target loss); tasks:
``useful``, ``harmful``, ``redundant`` (a list of groups of tasks that share one task's weight),
``sizes`` (units per task), ``ideal`` (task -> the weight of the equal mix of useful chains,
split evenly inside a redundant group), ``target_entropy`` (mean over the three chains).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import markov
from .corpus import DomainCorpus

__all__ = ["PoolSuite", "make_pool_suite", "make_task_suite"]

POOL_VOCAB, SHARED, TOPIC = 48, 16, 16
POOL_SOURCES = ("target", "conflict", "offtopic", "noise")
TASK_VOCAB = 32
TASK_UNITS = {"a": 4, "a_dup": 4, "b": 1, "c": 2, "conflict": 2, "noise": 4}
TASK_CHAIN = {"a": "a", "a_dup": "a", "b": "b", "c": "c", "conflict": "conflict"}
USEFUL = ("a", "b", "c")


class PoolSuite(NamedTuple):
    """The ADAPT pool: the corpus (domains are the labels) and a separate anchor stream."""

    corpus: DomainCorpus
    anchor: np.ndarray  # uint16 (anchor_tokens,): fresh target-chain samples


class _SubChain(NamedTuple):
    """A ``random_chain`` over some tokens of the vocabulary only."""

    p: np.ndarray  # float64 (k, k) transition matrix over ``tokens``
    tokens: np.ndarray  # int64 (k,) the token ids it uses

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` tokens (uint16): runs of the chain mapped to its token ids."""
        return self.tokens[markov.sample_chain(self.p, n, rng)].astype(np.uint16)


def _sub_chain(tokens: np.ndarray, rng: np.random.Generator) -> _SubChain:
    return _SubChain(markov.random_chain(tokens.size, rng), tokens)


def _check(name: str, value: int, least: int) -> int:
    if int(value) != value or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _stream(seed: int, name: str, split: int) -> np.random.Generator:
    """One independent sample stream per (source, split): resizing one never shifts another."""
    return np.random.default_rng([seed, 1 + split, *name.encode("utf-8")])


def make_pool_suite(
    *,
    seed: int = 0,
    tokens_per_source: int = 20000,
    val_tokens: int = 8192,
    anchor_tokens: int = 2112,
) -> PoolSuite:
    """The labelled pool for ADAPT (module docstring).

    Args:
        seed: everything (chains, samples) is a deterministic function of it.
        tokens_per_source: training tokens of each of the four sources (>= 64).
        val_tokens: tokens of the target validation set (>= 64).
        anchor_tokens: tokens of the anchor stream (>= 64; 2112 = 64 windows of 33 tokens).

    Returns:
        ``PoolSuite(corpus, anchor)``; ``corpus.known_answer`` as in the module docstring.
    """
    n = _check("tokens_per_source", tokens_per_source, 64)
    rng = np.random.default_rng([seed, 0])  # structure (chains), not samples
    own = np.arange(SHARED + TOPIC)
    other = np.concatenate([np.arange(SHARED), np.arange(SHARED + TOPIC, POOL_VOCAB)])
    chains = {
        "target": _sub_chain(own, rng),
        "conflict": _sub_chain(own, rng),
        "offtopic": _sub_chain(other, rng),
    }
    train = []
    for name in POOL_SOURCES:
        r = _stream(seed, name, 0)
        if name == "noise":
            train.append(markov.iid_tokens(POOL_VOCAB, n, r))
        else:
            train.append(chains[name].sample(n, r))
    target = chains["target"]
    val = target.sample(_check("val_tokens", val_tokens, 64), _stream(seed, "val", 1))
    anchor = target.sample(_check("anchor_tokens", anchor_tokens, 64), _stream(seed, "anchor", 1))
    known = {
        "in_distribution": ["target"],
        "off_target": ["conflict", "offtopic", "noise"],
        "in_share": 0.25,
        "target_entropy": markov.entropy_rate(target.p),
    }
    corpus = DomainCorpus(POOL_SOURCES, train, ("target",), (val,), POOL_VOCAB, known)
    return PoolSuite(corpus, anchor)


def make_task_suite(
    *, seed: int = 0, unit_tokens: int = 4000, val_tokens: int = 4000
) -> DomainCorpus:
    """The related tasks for TaskPGM (module docstring).

    Args:
        seed: everything (chains, samples) is a deterministic function of it.
        unit_tokens: tokens of one size unit (``b`` has one, ``a`` four; >= 64).
        val_tokens: tokens of each of the three target streams (>= 64).

    Returns:
        The corpus (tasks ``a, a_dup, b, c, conflict, noise``; validation ``target_a,
        target_b, target_c``) with ``known_answer``.
    """
    unit = _check("unit_tokens", unit_tokens, 64)
    val_n = _check("val_tokens", val_tokens, 64)
    rng = np.random.default_rng([seed, 0])
    chains = {k: markov.random_chain(TASK_VOCAB, rng) for k in (*USEFUL, "conflict")}
    train = []
    for task, units in TASK_UNITS.items():
        r = _stream(seed, task, 0)
        if task == "noise":
            train.append(markov.iid_tokens(TASK_VOCAB, units * unit, r))
        else:
            train.append(markov.sample_chain(chains[TASK_CHAIN[task]], units * unit, r))
    val_names = tuple(f"target_{k}" for k in USEFUL)
    val = tuple(
        markov.sample_chain(chains[k], val_n, _stream(seed, f"target_{k}", 1)) for k in USEFUL
    )
    ideal = {"a": 1 / 6, "a_dup": 1 / 6, "b": 1 / 3, "c": 1 / 3, "conflict": 0.0, "noise": 0.0}
    known: dict[str, Any] = {
        "useful": ["a", "a_dup", "b", "c"],
        "harmful": ["conflict", "noise"],
        "redundant": [["a", "a_dup"]],
        "sizes": dict(TASK_UNITS),
        "ideal": ideal,
        "target_entropy": float(np.mean([markov.entropy_rate(chains[k]) for k in USEFUL])),
    }
    return DomainCorpus(tuple(TASK_UNITS), train, val_names, val, TASK_VOCAB, known)
