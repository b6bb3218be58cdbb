"""``from_arrays``: in-memory token arrays or lists of documents -> ``DomainCorpus``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .corpus import DataError, DomainCorpus
from .readers import resolve_tokenizer
from .streams import Part, build_corpus

__all__ = ["from_arrays"]


def _part(kind: str, name: str, value: Any) -> list[Part]:
    """One part: a list of documents if ``value`` holds strings, else a token array."""
    where = f"{kind} domain {name!r}"
    if isinstance(value, (str, bytes)):
        raise DataError(f"{where}: pass a list of documents, not a single string")
    if isinstance(value, np.ndarray) and value.dtype.kind not in "US":
        return [(where, value)]
    items = list(value)
    if items and all(isinstance(v, str) for v in items):
        return [(where, items)]
    if any(isinstance(v, (str, bytes)) for v in items):
        raise DataError(f"{where}: mixes documents (str) with other values")
    if not items:
        return [(where, [])]  # no documents: reported as an empty domain
    return [(where, np.asarray(items))]


def _domains(kind: str, data: Mapping[str, Any]) -> dict[str, list[Part]]:
    if not isinstance(data, Mapping):
        raise DataError(f"{kind} data must be a dict of domain name -> array or documents")
    return {str(name): _part(kind, str(name), value) for name, value in data.items()}


def from_arrays(
    train: Mapping[str, Any],
    val: Mapping[str, Any] | None = None,
    target: Any = None,
    vocab_size: int | None = None,
    tokenizer: Any = None,
) -> DomainCorpus:
    """Build a corpus from memory: each domain is a token stream or a list of documents.

    Args:
        train: domain name -> a 1-D integer token stream ``(n,)`` (used as is), or a list of
            documents (``str``, tokenized and joined with EOS). Domains keep the dict order.
        val: per-domain validation data with the same keys as ``train``.
        target: a separate target validation set: a dict of target domains, or one stream /
            list of documents (named ``"target"``). Exclusive with ``val``.
        vocab_size: explicit; else the tokenizer's when there is text, else max id + 1.
        tokenizer: None (``ByteTokenizer`` for text), a ``tokenizer.json`` path, or an object.

    Returns:
        The ``DomainCorpus`` (no validation data when neither ``val`` nor ``target`` is given).

    Raises:
        DataError: empty domain, token id out of range, mismatched ``val`` domains.
        ValueError: both ``val`` and ``target`` given.

    Examples:
        >>> corpus = from_arrays({"a": ["hello", "world"], "b": np.arange(10)}, target=["hi"])
        >>> corpus.domains, corpus.val_domains, corpus.vocab_size
        (('a', 'b'), ('target',), 257)
    """
    if val is not None and target is not None:
        raise ValueError("give either val (per-domain validation) or target, not both")
    train_parts = _domains("training", train)
    val_parts: dict[str, list[Part]] = {}
    if val is not None:
        val_parts = _domains("validation", val)
        if set(val_parts) != set(train_parts):
            raise DataError(
                f"validation domains {sorted(val_parts)} differ from training domains "
                f"{sorted(train_parts)}; use target= for a separate validation set"
            )
        val_parts = {name: val_parts[name] for name in train_parts}
    elif target is not None:
        target = target if isinstance(target, Mapping) else {"target": target}
        val_parts = _domains("target", target)
    return build_corpus(
        train_parts, val_parts, tokenizer=resolve_tokenizer(tokenizer), vocab_size=vocab_size
    )
