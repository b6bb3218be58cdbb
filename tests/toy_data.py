"""A minimal in-memory BatchSampler and a 3-domain toy task for backend tests (no adapters needed).

Domains: ``target`` (an order-1 Markov chain), ``related`` (the chain with perturbed rows) and
``noise`` (uniform tokens); validation: the target chain. A good mixture down-weights ``noise``.
"""

from __future__ import annotations

import numpy as np

import tandem_core as tc


def markov_stream(trans: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    v = trans.shape[0]
    out = np.empty(n, dtype=np.int64)
    out[0] = rng.integers(v)
    u = rng.random(n)
    cdf = np.cumsum(trans, axis=1)
    for i in range(1, n):
        out[i] = min(np.searchsorted(cdf[out[i - 1]], u[i]), v - 1)
    return out


def toy_streams(vocab: int = 16, n: int = 6000, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
    related = trans.copy()
    related[: vocab // 2] = rng.dirichlet(np.full(vocab, 0.1), size=vocab // 2)
    train = [
        markov_stream(trans, n, rng),
        markov_stream(related, n, rng),
        rng.integers(0, vocab, n),
    ]
    val = [markov_stream(trans, n // 2, rng)]
    return train, val


class ToySampler:
    """Random windows of per-domain token streams; one RNG stream per method (resumable)."""

    def __init__(self, train, val, seq_len, *, names=None, val_names=None, vocab_size=16, seed=0):
        self.train, self.val = [np.asarray(s) for s in train], [np.asarray(s) for s in val]
        self.domains = tuple(names or [f"d{i}" for i in range(len(train))])
        self.val_domains = tuple(val_names or [f"v{i}" for i in range(len(val))])
        self.seq_len, self.vocab_size = seq_len, vocab_size
        seeds = np.random.SeedSequence(seed).spawn(4)
        self.rngs = {
            k: np.random.default_rng(s) for k, s in zip(("train", "mix", "val", "eval"), seeds)
        }

    def _rows(self, streams, which, rng):
        t = self.seq_len
        starts = [rng.integers(0, len(streams[d]) - t - 1) for d in which]
        w = np.stack([streams[d][s : s + t + 1] for d, s in zip(which, starts)])
        return {
            "tokens": w[:, :-1].astype(np.int32),
            "labels": w[:, 1:].astype(np.int32),
            "domain": np.asarray(which, dtype=np.int32),
        }

    def train_batch(self, per_domain):
        return self._rows(
            self.train, np.repeat(np.arange(len(self.train)), per_domain), self.rngs["train"]
        )

    def eval_batch(self, per_domain):
        return self._rows(
            self.train, np.repeat(np.arange(len(self.train)), per_domain), self.rngs["eval"]
        )

    def mixture_batch(self, alpha, size):
        which = self.rngs["mix"].choice(len(self.train), size=size, p=np.asarray(alpha, float))
        return self._rows(self.train, np.sort(which), self.rngs["mix"])

    def val_batch(self, size):
        return self._rows(self.val, np.arange(size) % len(self.val), self.rngs["val"])

    def validation_sets(self, max_per_domain):
        t = self.seq_len
        out = []
        for v, s in enumerate(self.val):
            n = min(max_per_domain, (len(s) - 1) // t)
            w = np.stack([s[i * t : i * t + t + 1] for i in range(n)])
            out.append(
                {
                    "tokens": w[:, :-1].astype(np.int32),
                    "labels": w[:, 1:].astype(np.int32),
                    "domain": np.full(n, v, dtype=np.int32),
                }
            )
        return out

    def domain_sizes(self):
        return [len(s) for s in self.train]

    def state_dict(self):
        return {k: r.bit_generator.state for k, r in self.rngs.items()}

    def load_state_dict(self, state):
        for k, r in self.rngs.items():
            r.bit_generator.state = state[k]


def toy_sampler(seq_len: int = 16, seed: int = 0, **kw) -> ToySampler:
    train, val = toy_streams(seed=seed, **kw)
    return ToySampler(
        train, val, seq_len, names=["target", "related", "noise"], val_names=["target"], seed=seed
    )


assert isinstance(toy_sampler(), tc.BatchSampler)


class PoisonRows:
    """Wraps a sampler: the train batches of the given calls get the poison token in row 0."""

    def __init__(self, base, token, calls):
        self.base, self.token, self.calls, self.n = base, token, set(calls), 0
        for attr in ("domains", "val_domains", "seq_len", "vocab_size"):
            setattr(self, attr, getattr(base, attr))

    def train_batch(self, per_domain):
        batch = self.base.train_batch(per_domain)
        if self.n in self.calls:
            batch["tokens"][0, 3] = self.token
        self.n += 1
        return batch

    def __getattr__(self, name):
        return getattr(self.base, name)
