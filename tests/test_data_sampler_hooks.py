"""Stream objects refine how the sampler cuts rows (``data.windows`` hooks)."""

from __future__ import annotations

import numpy as np

from tandem_adapters.data import DomainCorpus, TokenSampler
from tandem_core import IGNORE_INDEX


class _Masked:
    """A stream whose even tokens are never labels, whose rows start at multiples of 10."""

    def __init__(self, tokens: np.ndarray) -> None:
        self._tokens = tokens
        self.shape, self.ndim, self.dtype = tokens.shape, 1, tokens.dtype
        self.loss_mask = np.arange(tokens.shape[0]) % 2 == 1

    def __getitem__(self, index):
        return self._tokens[index]

    def draw_starts(self, seq_len, count, rng):
        return rng.integers(0, (self.shape[0] - seq_len) // 10, size=count) * 10

    def first_starts(self, seq_len, max_rows):
        return np.arange(max_rows, dtype=np.int64) * 10


def test_loss_mask_and_start_hooks_are_used_by_the_sampler():
    tokens = np.arange(200, dtype=np.int32) % 50
    corpus = DomainCorpus(("a",), (_Masked(tokens),), ("a",), (tokens,), vocab_size=50)
    sampler = TokenSampler(corpus, 8, seed=0)
    batch = sampler.train_batch(16)
    assert (batch["tokens"][:, 0] % 10 == 0).all()  # rows start where the stream says
    position = batch["tokens"].astype(np.int64) + 1  # label j predicts token start + j + 1
    masked = batch["labels"] == IGNORE_INDEX
    np.testing.assert_array_equal(masked, position % 2 == 0)  # even positions carry no loss
    (val,) = sampler.validation_sets(3)
    assert (val["labels"] != IGNORE_INDEX).all()  # a plain array: every label counts
    np.testing.assert_array_equal(val["tokens"][:, 0], [0, 8, 16])
