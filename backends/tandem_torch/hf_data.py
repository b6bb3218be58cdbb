"""``DatasetSampler``: batches by domain from Hugging Face datasets with a domain column.

The sampler of ``TandemTrainer`` (``hf_trainer``); it needs no ``transformers`` and reads only the
rows it draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import tandem_core as tc
from tandem_core.data import Batch

__all__ = ["DatasetSampler"]

STREAMS = ("train", "mixture", "val", "eval")  # independent RNG streams, as TokenSampler's


class DatasetSampler:
    """A seeded, resumable ``tandem_core.BatchSampler`` over datasets with a domain column.

    Rows are read by index (``dataset[list]``), so the dataset is never loaded whole. A row's
    ``input_ids`` / ``labels`` follow the Hugging Face convention (labels aligned with the
    inputs, -100 not scored); batches are shifted to tandem's ``tokens (B, T)`` / ``labels (B, T)``
    and padded to the longest row (token 0, label -100).

    Args:
        train: the training rows (``input_ids``, optional ``labels``, ``domain_column``).
        val: the validation rows (same columns); their domains are the validation domains.
        domain_column: the column naming each row's domain (str or int values).
        seed: the same seed gives the same batches in any process (every rank draws alike).
    """

    def __init__(self, train: Any, val: Any, *, domain_column: str = "domain", seed: int = 0):
        self.train, self.val = train, val
        self.domains, self._rows = _rows_by_domain(train[domain_column])
        self.val_domains, self._val_rows = _rows_by_domain(val[domain_column])
        self.vocab_size = None
        self.seed = int(seed)
        children = np.random.SeedSequence(self.seed).spawn(len(STREAMS))
        self._rngs = {n: np.random.default_rng(c) for n, c in zip(STREAMS, children)}
        self._val_cursor = 0

    def _batch(self, data: Any, rows: list, domain: np.ndarray, rng: Any) -> Batch:
        """Rows of ``domain (B,)`` drawn uniformly (with replacement) within each domain."""
        index = np.concatenate(
            [rng.choice(rows[m], size=int((domain == m).sum())) for m in np.unique(domain)]
        )
        picked = data[index.tolist()]
        tokens, labels = _shifted(picked["input_ids"], picked.get("labels"))
        return {"tokens": tokens, "labels": labels, "domain": np.sort(domain).astype(np.int32)}

    def train_batch(self, per_domain: int) -> Batch:
        """``M * per_domain`` rows, domain by domain."""
        domain = np.repeat(np.arange(len(self.domains)), per_domain)
        return self._batch(self.train, self._rows, domain, self._rngs["train"])

    def eval_batch(self, per_domain: int) -> Batch:
        """Like ``train_batch`` from an independent stream: the batches Delta is measured on."""
        domain = np.repeat(np.arange(len(self.domains)), per_domain)
        return self._batch(self.train, self._rows, domain, self._rngs["eval"])

    def mixture_batch(self, alpha: Any, size: int) -> Batch:
        """``size`` rows whose domains are drawn i.i.d. from ``alpha`` (float ``(M,)``)."""
        alpha = np.asarray(alpha, dtype=np.float64)
        rng = self._rngs["mixture"]
        domain = rng.choice(len(self.domains), size=size, p=alpha / alpha.sum())
        return self._batch(self.train, self._rows, domain, rng)

    def val_batch(self, size: int) -> Batch:
        """``size`` validation rows stratified over ``val_domains`` (round-robin remainder)."""
        v = len(self.val_domains)
        domain = np.sort((self._val_cursor + np.arange(size)) % v)
        self._val_cursor = (self._val_cursor + size) % v
        return self._batch(self.val, self._val_rows, domain, self._rngs["val"])

    def domain_sizes(self) -> list[int]:
        """Rows per training domain (natural / temperature mixtures): rows, since none is read."""
        return [len(r) for r in self._rows]

    def state_dict(self) -> dict:
        """JSON-serialisable RNG states and the validation cursor."""
        rngs = {n: r.bit_generator.state for n, r in self._rngs.items()}
        return {"seed": self.seed, "rngs": rngs, "val_cursor": self._val_cursor}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``: the following batches equal those of the saved run."""
        for name, rng in self._rngs.items():
            rng.bit_generator.state = state["rngs"][name]
        self._val_cursor = int(state["val_cursor"])


def _rows_by_domain(values: Any) -> tuple[tuple, list[np.ndarray]]:
    """Domain names (sorted) and each domain's row indices, from a domain column."""
    values = np.asarray(list(values))
    names = tuple(sorted(set(values.tolist()), key=str))
    return tuple(map(str, names)), [np.flatnonzero(values == n) for n in names]


def _shifted(input_ids: list, labels: list | None) -> tuple[np.ndarray, np.ndarray]:
    """HF rows (labels aligned with inputs) as tandem's ``tokens``, ``labels`` ``(B, T - 1)``.

    Ragged rows are padded to the longest (token 0, label ``IGNORE_INDEX``).
    """
    labels = input_ids if labels is None else labels
    width = max(len(r) for r in input_ids)
    tokens = np.zeros((len(input_ids), width), dtype=np.int32)
    target = np.full((len(input_ids), width), tc.IGNORE_INDEX, dtype=np.int32)
    for i, (x, y) in enumerate(zip(input_ids, labels)):
        tokens[i, : len(x)], target[i, : len(y)] = x, y
    return tokens[:, :-1], target[:, 1:]
