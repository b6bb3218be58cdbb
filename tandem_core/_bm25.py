"""ADAPT-BM25 scores: host-side numpy, sparse, precomputed once offline.

The ADAPT variant with static lexical scores (docs/methods.md, "ADAPT: ADAPT-BM25").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["QUERY_ROLES", "bm25_scores", "bm25_term_weights"]

QUERY_ROLES = ("train", "anchor")


def _flatten(docs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated token ids and the document index of each token."""
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    parts = [np.asarray(d, dtype=np.int64).reshape(-1) for d in docs]
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return tokens, np.repeat(np.arange(len(docs)), lengths)


def _saturated_tf(tokens, doc_of, num_docs, vocab, k1, b):
    """Per (doc, term) pair of a collection: ``(doc, term, tf-part of BM25, doc frequency)``."""
    lengths = np.bincount(doc_of, minlength=num_docs).astype(np.float64)
    avgdl = max(lengths.mean(), 1e-12) if num_docs else 1.0
    pairs, tf = np.unique(doc_of * vocab + tokens, return_counts=True)
    doc, term = pairs // vocab, pairs % vocab
    norm = k1 * (1.0 - b + b * lengths[doc] / avgdl)
    df = np.bincount(term, minlength=vocab).astype(np.float64)
    return doc, term, tf * (k1 + 1.0) / (tf + norm), df


def _idf(df: np.ndarray, num_docs: int) -> np.ndarray:
    return np.log1p((num_docs - df + 0.5) / (df + 0.5))


def bm25_scores(
    train_docs: Sequence[Sequence[int]],
    anchor_docs: Sequence[Sequence[int]],
    *,
    k1: float = 1.5,
    b: float = 0.75,
    query: str = "train",
) -> np.ndarray:
    """ADAPT-BM25 score ``s(x) = (1/|V|) sum_v BM25(x, v)`` of every training document.

    Okapi BM25 with the non-negative (Lucene) IDF ``log(1 + (N - n_t + 0.5) / (n_t + 0.5))``,
    ``BM25(q, d) = sum over the tokens t of q (repeats count) of
    IDF(t) * f(t, d) (k1 + 1) / (f(t, d) + k1 (1 - b + b |d| / avgdl))``.

    Roles (the paper's choice is not known):

    - ``query="train"`` (default, an online index over V; docs/methods.md, "ADAPT: ADAPT-BM25"):
      x is the query; the anchors are the document collection, with their own IDF and average
      length. A training document's score does not depend on the other training documents, so
      batches can be scored online. Longer queries sum more terms: scores grow with the length
      of x.
    - ``query="anchor"``: each anchor v is a query against the training collection (IDF and length
      normalisation over the training documents), the usual offline-selection setup.

    Both are sparse dot products over the vocabulary, ``O(total tokens * log)``, no Python loop over
    document pairs. BM25 is unbounded: ``standardize`` the scores (or rescale tau) before the gate.

    Args:
        train_docs: N sequences of non-negative token ids (lists or integer arrays).
        anchor_docs: |V| >= 1 sequences of token ids.
        k1: term-frequency saturation, >= 0.
        b: length normalisation in ``[0, 1]``.
        query: ``"train"`` or ``"anchor"``, which side is the query.

    Returns:
        float64 array ``(N,)``.
    """
    if query not in QUERY_ROLES:
        raise ValueError(f"unknown query role {query!r}; choose one of {QUERY_ROLES}")
    if not k1 >= 0 or not 0.0 <= b <= 1.0:
        raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    if len(anchor_docs) == 0:
        raise ValueError("anchor_docs is empty: ADAPT-BM25 needs at least one anchor")
    x_tok, x_doc = _flatten(train_docs)
    v_tok, v_doc = _flatten(anchor_docs)
    if (x_tok.size and x_tok.min() < 0) or (v_tok.size and v_tok.min() < 0):
        raise ValueError("token ids must be non-negative integers")
    # compact vocabulary over both sides, so huge or sparse ids cost nothing
    _, ids = np.unique(np.concatenate([x_tok, v_tok]), return_inverse=True)
    vocab = int(ids.max()) + 1 if ids.size else 1
    x_tok, v_tok = ids[: x_tok.size], ids[x_tok.size :]
    n_train, n_anchor = len(train_docs), len(anchor_docs)
    if query == "train":
        doc, term, sat, df = _saturated_tf(v_tok, v_doc, n_anchor, vocab, k1, b)
        weight = _idf(df, n_anchor) * np.bincount(term, weights=sat, minlength=vocab) / n_anchor
        return np.bincount(x_doc, weights=weight[x_tok], minlength=n_train)
    doc, term, sat, df = _saturated_tf(x_tok, x_doc, n_train, vocab, k1, b)
    q_count = np.bincount(v_tok, minlength=vocab).astype(np.float64) / n_anchor
    contrib = q_count[term] * _idf(df, n_train)[term] * sat
    return np.bincount(doc, weights=contrib, minlength=n_train)


def bm25_term_weights(
    anchor_docs: Sequence[Sequence[int]], vocab_size: int, *, k1: float = 1.5, b: float = 0.75
) -> np.ndarray:
    """The ``query="train"`` BM25 index over the anchors as one weight per vocabulary term.

    With the anchors as the collection, ``(1/|V|) sum_v BM25(x, v) = sum over the tokens t of x
    (repeats count) of q_t``, where ``q_t = IDF(t) * mean_v f(t, v) (k1 + 1) / (f(t, v) + k1 (1
    - b + b |v| / avgdl))``. Scoring a training batch is then a gather and a row sum, which
    equals ``bm25_scores(rows, anchor_docs)`` (online ADAPT-BM25, no Python loop per batch).

    Args:
        anchor_docs: |V| >= 1 sequences of token ids in ``[0, vocab_size)``.
        vocab_size: size of the token id space.
        k1: term-frequency saturation, >= 0.
        b: length normalisation in ``[0, 1]``.

    Returns:
        float64 array ``(vocab_size,)``, zero for terms absent from the anchors.
    """
    if not k1 >= 0 or not 0.0 <= b <= 1.0:
        raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    if len(anchor_docs) == 0:
        raise ValueError("anchor_docs is empty: ADAPT-BM25 needs at least one anchor")
    tokens, doc_of = _flatten(anchor_docs)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"anchor token ids must be in [0, {vocab_size})")
    n = len(anchor_docs)
    _, term, sat, df = _saturated_tf(tokens, doc_of, n, int(vocab_size), k1, b)
    return _idf(df, n) * np.bincount(term, weights=sat, minlength=int(vocab_size)) / n
