"""Token generators of the synthetic suites: sparse order-1 Markov chains and simple patterns."""

from __future__ import annotations

import numpy as np

__all__ = [
    "entropy_rate",
    "iid_tokens",
    "pattern_tokens",
    "perturb_chain",
    "random_chain",
    "repeated_sequences",
    "sample_chain",
]


def random_chain(
    vocab_size: int, rng: np.random.Generator, *, branching: int = 3, smoothing: float = 0.02
) -> np.ndarray:
    """A transition matrix where each token has ``branching`` likely successors.

    Each row puts ``1 - smoothing`` on ``branching`` random successors (Dirichlet(1) weights)
    and spreads ``smoothing`` uniformly, so the chain is ergodic but far from uniform.

    Returns:
        float64 ``(V, V)``, rows sum to 1.
    """
    p = np.full((vocab_size, vocab_size), smoothing / vocab_size)
    for row in range(vocab_size):
        succ = rng.choice(vocab_size, size=branching, replace=False)
        p[row, succ] += (1.0 - smoothing) * rng.dirichlet(np.ones(branching))
    return p


def perturb_chain(
    p: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    *,
    strength: float = 0.5,
    branching: int = 3,
) -> np.ndarray:
    """``p`` with ``round(fraction * V)`` random rows mixed with fresh random rows.

    Perturbed rows become ``(1 - strength) * p + strength * q``. Mixing (rather than replacing
    rows) keeps the chain's likely successors, so data from it stays useful for ``p``: a
    replaced row teaches confidently wrong successors and can be worse than noise.
    """
    v = p.shape[0]
    rows = rng.choice(v, size=round(fraction * v), replace=False)
    out = p.copy()
    out[rows] = (1.0 - strength) * p[rows] + strength * random_chain(v, rng, branching=branching)[
        rows
    ]
    return out


def sample_chain(
    p: np.ndarray, n: int, rng: np.random.Generator, *, num_chains: int = 64
) -> np.ndarray:
    """``n`` tokens: ``num_chains`` independent runs of the chain ``p``, concatenated.

    Running the chains side by side keeps the Python loop at ``n / num_chains`` steps, which
    is what makes a suite take milliseconds. Each run starts at a uniform random token.

    Returns:
        uint16 ``(n,)``.
    """
    length = -(-n // num_chains)
    cdf = np.cumsum(p, axis=1)
    x = np.empty((num_chains, length), dtype=np.int64)
    x[:, 0] = rng.integers(0, p.shape[0], size=num_chains)
    u = rng.random((num_chains, length))
    for t in range(1, length):  # inverse-CDF step for all chains at once
        x[:, t] = (u[:, t, None] > cdf[x[:, t - 1]]).sum(axis=1)
    return np.minimum(x.reshape(-1)[:n], p.shape[0] - 1).astype(np.uint16)


def iid_tokens(vocab_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. uniform tokens (unigram entropy ``log V``), uint16 ``(n,)``."""
    return rng.integers(0, vocab_size, size=n).astype(np.uint16)


def pattern_tokens(pattern: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """``pattern`` repeated to ``n`` tokens, starting at ``offset`` in it; uint16 ``(n,)``."""
    return np.resize(np.roll(pattern, -offset), n).astype(np.uint16)


def repeated_sequences(
    p: np.ndarray, num_sequences: int, length: int, rng: np.random.Generator
) -> np.ndarray:
    """``num_sequences`` chain runs of ``length`` tokens, concatenated into one cycle.

    Returns:
        uint16 ``(num_sequences * length,)``: repeat it (``pattern_tokens``) for a domain
        with only ``num_sequences * length`` distinct windows.
    """
    return sample_chain(p, num_sequences * length, rng, num_chains=num_sequences)


def entropy_rate(p: np.ndarray) -> float:
    """Entropy rate (nats per token) of the chain: the best achievable loss on its samples."""
    pi = np.full(p.shape[0], 1.0 / p.shape[0])
    for _ in range(500):  # power iteration to the stationary distribution
        pi = pi @ p
    return float(-(pi[:, None] * p * np.log(p)).sum())
