"""``TokenSampler``: the seeded, resumable ``tandem_core.BatchSampler`` over a ``DomainCorpus``."""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem_core.data import Batch

from .corpus import DomainCorpus
from .windows import cut_rows, draw_starts, first_starts

__all__ = ["TokenSampler"]

# One independent random stream per method, so e.g. evaluating never shifts training batches.
STREAMS = ("train", "mixture", "val", "eval")
STATE_VERSION = 1


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class TokenSampler:
    """Random windows of ``seq_len + 1`` tokens from a corpus's streams (``BatchSampler``).

    Each row is ``w = stream[s : s + T + 1]`` at a uniform random offset ``s``, giving
    ``tokens = w[:-1]`` and ``labels = w[1:]`` (int32 ``(B, T)``). A stream shorter than
    ``T + 1`` gives one padded row (tokens 0, labels ``IGNORE_INDEX`` past its end).

    Args:
        corpus: the ``DomainCorpus``.
        seq_len: T >= 1.
        seed: non-negative int; the same seed gives the same batches in any process.
    """

    def __init__(self, corpus: DomainCorpus, seq_len: int, *, seed: int = 0) -> None:
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.corpus = corpus
        self.domains = corpus.domains
        self.val_domains = corpus.val_domains
        self.seq_len = _positive("seq_len", seq_len)
        self.vocab_size = corpus.vocab_size
        self.seed = int(seed)
        children = np.random.SeedSequence(self.seed).spawn(len(STREAMS))
        self._rngs = {name: np.random.default_rng(c) for name, c in zip(STREAMS, children)}
        self._val_cursor = 0  # next validation domain of the round-robin

    def _batch(self, streams: tuple, domain: np.ndarray, rng: np.random.Generator) -> Batch:
        """Rows for ``domain (B,)``, drawn domain by domain in increasing index order."""
        tokens = np.empty((domain.shape[0], self.seq_len), dtype=np.int32)
        labels = np.empty_like(tokens)
        for m in np.unique(domain):
            rows = np.flatnonzero(domain == m)
            stream = streams[m]
            starts = draw_starts(stream, self.seq_len, rows.shape[0], rng)
            tokens[rows], labels[rows] = cut_rows(stream, starts, self.seq_len)
        return {"tokens": tokens, "labels": labels, "domain": domain.astype(np.int32)}

    def train_batch(self, per_domain: int) -> Batch:
        """``M * per_domain`` rows; rows ``[m * b, (m + 1) * b)`` are domain ``m``'s (DoGE)."""
        b = _positive("per_domain", per_domain)
        domain = np.repeat(np.arange(len(self.domains)), b)
        return self._batch(self.corpus.train, domain, self._rngs["train"])

    def eval_batch(self, per_domain: int) -> Batch:
        """Like ``train_batch`` from an independent stream: the batches Delta is evaluated on."""
        b = _positive("per_domain", per_domain)
        domain = np.repeat(np.arange(len(self.domains)), b)
        return self._batch(self.corpus.train, domain, self._rngs["eval"])

    def mixture_batch(self, alpha: Any, size: int) -> Batch:
        """``size`` rows whose domains are drawn i.i.d. from ``alpha`` (float ``(M,)``).

        Raises:
            ValueError: ``alpha`` is not ``(M,)``, not finite, negative, or does not sum to 1
                within 1e-6; ``size < 1``.
        """
        size = _positive("size", size)
        alpha = np.asarray(alpha, dtype=np.float64)
        m = len(self.domains)
        if alpha.shape != (m,):
            raise ValueError(
                f"alpha must have shape ({m},) (one weight per domain), got {alpha.shape}"
            )
        if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
            raise ValueError(f"alpha must be finite and non-negative, got {alpha.tolist()}")
        if abs(alpha.sum() - 1.0) > 1e-6:
            raise ValueError(f"alpha must sum to 1 (within 1e-6), got sum {alpha.sum():.8g}")
        rng = self._rngs["mixture"]
        domain = rng.choice(m, size=size, p=alpha / alpha.sum())
        return self._batch(self.corpus.train, domain, rng)

    def val_batch(self, size: int) -> Batch:
        """``size`` validation rows stratified over ``val_domains`` (round-robin remainder).

        Each validation domain gets ``size // V`` rows; the ``size % V`` extra rows go to the
        next domains of a round-robin that continues across calls. ``domain`` is the
        validation-domain index; rows are grouped by it.
        """
        size = _positive("size", size)
        v = len(self.val_domains)
        if v == 0:
            raise ValueError(
                "the corpus has no validation data (give val_path/val_fraction/target)"
            )
        domain = np.sort((self._val_cursor + np.arange(size)) % v)
        self._val_cursor = (self._val_cursor + size) % v
        return self._batch(self.corpus.val, domain, self._rngs["val"])

    def validation_sets(self, max_per_domain: int) -> list[Batch]:
        """One deterministic batch per validation domain (at most ``max_per_domain`` rows each).

        Rows are the first non-overlapping windows of each stream (``sequential_starts``);
        they do not depend on the seed or on any random state.
        """
        k = _positive("max_per_domain", max_per_domain)
        out = []
        for v, stream in enumerate(self.corpus.val):
            starts = first_starts(stream, self.seq_len, k)
            tokens, labels = cut_rows(stream, starts, self.seq_len)
            domain = np.full(starts.shape[0], v, dtype=np.int32)
            out.append({"tokens": tokens, "labels": labels, "domain": domain})
        return out

    def domain_sizes(self) -> list[int]:
        """Training tokens per domain (for natural / temperature mixtures).

        A stream with a ``domain_tokens`` attribute gives that instead of its length: a
        streamed domain holds only a buffer, and estimates the whole (``data.streamed``).
        """
        return [int(getattr(s, "domain_tokens", s.shape[0])) for s in self.corpus.train]

    def _stateful(self) -> dict[str, Any]:
        """Training streams that keep a position of their own (``state_dict`` methods)."""
        return {
            name: s
            for name, s in zip(self.domains, self.corpus.train)
            if callable(getattr(s, "state_dict", None))
        }

    def state_dict(self) -> dict:
        """JSON-serialisable position and RNG states (numpy ``bit_generator.state`` dicts).

        ``streams``: each stateful training stream's own ``state_dict`` (e.g. where a streamed
        domain reads next), saved beside the RNG states it must match.
        """
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "domains": list(self.domains),
            "val_domains": list(self.val_domains),
            "rngs": {name: rng.bit_generator.state for name, rng in self._rngs.items()},
            "val_cursor": self._val_cursor,
            "streams": {name: s.state_dict() for name, s in self._stateful().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``; the following batches equal those of the saved run.

        Raises:
            ValueError: the state is malformed or from a sampler over other domains / seq_len.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a TokenSampler state (version {STATE_VERSION} expected)")
        for key, mine in (("domains", self.domains), ("val_domains", self.val_domains)):
            if tuple(state.get(key, ())) != mine:
                raise ValueError(f"state has {key} {state.get(key)}, this sampler has {list(mine)}")
        if state.get("seq_len") != self.seq_len:
            raise ValueError(f"state has seq_len {state.get('seq_len')}, sampler {self.seq_len}")
        rngs = {}
        for name in STREAMS:  # build all first, so a bad state leaves the sampler unchanged
            rngs[name] = np.random.default_rng()
            try:
                rngs[name].bit_generator.state = state["rngs"][name]
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"state['rngs'][{name!r}] is missing or invalid: {err}") from err
        streams = state.get("streams") or {}  # absent in states of plain-array corpora
        stateful = self._stateful()
        unknown = sorted(set(streams) - set(stateful))
        if unknown:
            raise ValueError(f"state has stream positions of {unknown}, this sampler has none")
        for name, stream_state in streams.items():
            stateful[name].load_state_dict(stream_state)
        self._rngs = rngs
        self._val_cursor = int(state["val_cursor"]) % max(1, len(self.val_domains))
        self.seed = int(state["seed"])
