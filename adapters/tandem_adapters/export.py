"""A learned mixture written for the stacks users train with (``tandem export``, docs/export.md).

tandem learns **token** shares: ``w_m`` is the fraction of training tokens drawn from domain m.
Megatron, OLMo-core, Levanter and Mosaic (on fixed-length samples) mix sequences of equal length,
so they take token shares as they are. Hugging Face ``interleave_datasets`` draws whole
examples, so its probabilities are example shares: ``p_m ∝ w_m / t_m`` with ``t_m`` the domain's
mean tokens per example (``per_example``). ``optimize`` records what that needs in mixture.json
(``domain_stats``: tokens and examples per domain).

Every ``to_<format>`` function is pure: weights (or stages), paths and numbers in, text out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FORMATS",
    "MAX_EPOCHS",
    "STAGED",
    "corpus_stats",
    "count_examples",
    "domain_stats",
    "epochs",
    "per_example",
    "rounded",
    "stages",
    "to_format",
]

FORMATS = ("hf", "megatron", "olmo", "levanter", "mosaic", "json", "yaml")
STAGED = ("levanter", "json", "yaml")  # formats that take weights changing over steps
# Up to about 4 epochs, repeated tokens train almost as well as new ones (Muennighoff et al.
# 2023, "Scaling Data-Constrained Language Models"); beyond that a domain mostly overfits.
MAX_EPOCHS = 4.0
DIGITS = 6  # weights are written with this many decimals (the sum is kept exactly 1)
_FULL_COUNT = 1 << 24  # up to this many tokens the EOS ids are counted; above, a sample is
_SAMPLE = 1 << 20


# ------------------------------------------------------------------ what a run records


def count_examples(stream: Any, eos_id: int | None = None) -> tuple[int | None, bool]:
    """``(examples, estimated)`` of one training stream; ``(None, False)`` when unknown.

    Exact where the stream knows its boundaries (SFT example starts, Megatron ``.idx``, dolma
    metadata, EOS ids of tokenized text); otherwise the ``eos_id`` tokens are counted (a spread
    sample above 16M tokens: an estimate). A stream without EOS ids (synthetic data, ids
    tokenized without EOS) has no known example count.
    """
    from .data.shards import DocumentStream, ShardedStream
    from .data.streams import sample_ids

    if getattr(stream, "num_examples", None) is not None:  # SFTStream
        return int(stream.num_examples), False
    if isinstance(stream, DocumentStream):
        return int(stream.documents()[0].shape[0]), False
    if isinstance(stream, ShardedStream) and all(s.documents is not None for s in stream.shards):
        return sum(_shard_documents(s) for s in stream.shards), False
    if eos_id is None or not hasattr(stream, "shape"):
        return None, False
    n = int(stream.shape[0])
    sample = sample_ids(stream, _FULL_COUNT if n <= _FULL_COUNT else _SAMPLE)
    found = int(np.count_nonzero(np.asarray(sample) == eos_id))
    if found == 0:
        return None, False
    estimated = sample.shape[0] < n
    return (round(found * n / sample.shape[0]) if estimated else found), estimated


def _shard_documents(shard: Any) -> int:
    """Documents starting inside a shard's token view ``[offset, offset + n)`` (at least 1)."""
    starts = np.asarray(shard.documents(), dtype=np.int64) - shard.offset
    inside = int(np.count_nonzero((starts > 0) & (starts < shard.tokens.shape[0])))
    return inside + 1  # the view's first token always starts one


def domain_stats(
    domains: Sequence[str], streams: Sequence[Any], *, eos_id: int | None = None
) -> dict[str, dict]:
    """``{domain: {"tokens": n, "examples": k or None, "estimated": bool}}`` for mixture.json.

    ``tokens`` is what the sampler takes as the domain's size (``domain_tokens`` for a streamed
    domain, an estimate); ``examples`` comes from ``count_examples``.
    """
    out = {}
    for name, stream in zip(domains, streams):
        examples, estimated = count_examples(stream, eos_id)
        out[name] = {
            "tokens": int(getattr(stream, "domain_tokens", stream.shape[0])),
            "examples": examples,
            "estimated": estimated or hasattr(stream, "domain_tokens"),
        }
    return out


def corpus_stats(corpus: Any, data: Any) -> dict[str, dict]:
    """``domain_stats`` of a job's training corpus, with the EOS id of its ``[data]`` table.

    The EOS id is the tokenizer's (``data.tokenizer``); without one, text was read with the
    byte tokenizer (vocabulary 257, EOS 256) and pre-tokenized ids have no known EOS.
    """
    eos_id = None
    if data.tokenizer and data.format != "sft":  # SFT streams carry their example starts
        from .data.tokenizer import load_tokenizer

        eos_id = load_tokenizer(data.tokenizer).eos_id
    elif (data.path or data.hf_dataset) and corpus.vocab_size == 257:
        eos_id = 256
    return domain_stats(corpus.domains, corpus.train, eos_id=eos_id)


# ------------------------------------------------------------------ conversions


def rounded(weights: Mapping[str, float], digits: int = DIGITS) -> dict[str, float]:
    """Weights rounded to ``digits`` decimals, the rounding error given to the largest one.

    Readers check the sum (OLMo-core ``np.allclose(sum, 1)``, ``numpy.random.choice`` to about
    1e-8), which rounding each weight alone can miss with many domains.
    """
    total = sum(weights.values())
    out = {k: round(v / total, digits) for k, v in weights.items()}
    top = max(out, key=out.__getitem__)
    out[top] = round(out[top] + 1.0 - sum(out.values()), digits + 6)
    return out


def per_example(
    weights: Mapping[str, float], tokens_per_example: Mapping[str, float]
) -> dict[str, float]:
    """Token shares -> example shares: ``p_m ∝ w_m / t_m`` (``t_m``: mean tokens per example).

    Example: tokens per example 10 and 100, token weights 0.5 / 0.5 -> 10/11 and 1/11.
    """
    raw = {d: w / float(tokens_per_example[d]) for d, w in weights.items()}
    total = sum(raw.values())
    return {d: v / total for d, v in raw.items()}


def epochs(
    weights: Mapping[str, float], tokens: Mapping[str, int], budget: float
) -> dict[str, float]:
    """Passes over each domain when ``budget`` tokens are drawn: ``budget * w_m / n_m``."""
    return {d: budget * w / max(int(tokens[d]), 1) for d, w in weights.items()}


def stages(
    trajectory: np.ndarray,
    domains: Sequence[str],
    *,
    steps: int,
    count: int,
    multiple: int = 1,
) -> list[tuple[int, dict[str, float]]]:
    """The trajectory as at most ``count`` stages ``(first step, weights)`` over ``steps`` steps.

    Row i of the ``(T, M)`` trajectory holds from ``i / T`` of the run on (updates are evenly
    spaced in tandem's plans); stage k averages the rows of its share ``[k / S, (k + 1) / S)``
    and starts at step ``k * steps / S``, rounded down to a multiple of ``multiple`` (Levanter:
    a stage's first sequence must be a multiple of ``mixture_block_size``). Stages that would
    start at the same step are merged.
    """
    traj = np.asarray(trajectory, dtype=float).reshape(-1, len(domains))
    n = min(max(int(count), 1), traj.shape[0])
    out: list[tuple[int, dict[str, float]]] = []
    bounds = np.linspace(0, traj.shape[0], n + 1).round().astype(int)
    for k in range(n):
        rows = traj[bounds[k] : bounds[k + 1]]
        start = (math.floor(k * steps / n) // multiple) * multiple
        if out and start <= out[-1][0]:  # rounded onto the previous stage: one stage
            continue
        out.append((start, rounded(dict(zip(domains, rows.mean(axis=0))))))
    return out


# ------------------------------------------------------------------ formats


def to_format(
    fmt: str,
    weights: Mapping[str, float] | None,
    paths: Mapping[str, str],
    *,
    staged: list[tuple[int, dict[str, float]]] | None = None,
    budget: int | None = None,
    repeats: Mapping[str, float] | None = None,
) -> str:
    """The text of one format (``FORMATS``); ``staged`` replaces ``weights`` where allowed.

    Args:
        fmt: a name in ``FORMATS``.
        weights: ``{domain: weight}`` (token shares; example shares for ``hf``).
        paths: ``{domain: data path}``, every domain.
        staged: ``[(first step, weights), ...]`` (``STAGED`` formats only).
        budget: training tokens (OLMo-core's ``requested_tokens``), or None.
        repeats: ``{domain: epochs}`` at ``budget`` (OLMo-core's ``max_repetition_ratio``).
    """
    if staged is not None:
        return {"levanter": levanter, "json": plain_json, "yaml": plain_yaml}[fmt](staged, paths)
    if fmt == "olmo":
        return olmo(weights, paths, budget=budget, repeats=repeats)
    return {
        "hf": hf,
        "megatron": megatron,
        "levanter": levanter,
        "mosaic": mosaic,
        "json": plain_json,
        "yaml": plain_yaml,
    }[fmt](weights, paths)


def hf(probabilities: Mapping[str, float], paths: Mapping[str, str]) -> str:
    """JSON keyword arguments for ``datasets.interleave_datasets`` (example probabilities)."""
    p = rounded(probabilities)
    doc = {
        "domains": list(p),
        "datasets": [paths[d] for d in p],
        "probabilities": list(p.values()),
        "stopping_strategy": "all_exhausted",
    }
    return json.dumps(doc, indent=2) + "\n"


def megatron(weights: Mapping[str, float], paths: Mapping[str, str]) -> str:
    """The Megatron-LM / NeMo ``--data-path`` blend: ``"w1 prefix1 w2 prefix2 ..."``."""
    return " ".join(f"{w:g} {paths[d]}" for d, w in rounded(weights).items()) + "\n"


def olmo(
    weights: Mapping[str, float],
    paths: Mapping[str, str],
    *,
    budget: int | None = None,
    repeats: Mapping[str, float] | None = None,
) -> str:
    """OLMo-core ``SourceMixtureDatasetConfig`` fields (YAML): ``source_list.sources``.

    ``max_repetition_ratio`` (>= 1) lets a source repeat as often as ``budget`` needs.
    """
    sources = [
        {
            "source_name": d,
            "target_ratio": w,
            "paths": [paths[d]],
            "max_repetition_ratio": max(1.0, math.ceil((repeats or {}).get(d, 1.0) * 100) / 100),
        }
        for d, w in rounded(weights).items()
    ]
    doc: dict[str, Any] = {"source_list": {"sources": sources}}
    if budget is not None:
        doc["requested_tokens"] = int(budget)
    head = "# OLMo-core SourceMixtureDatasetConfig (olmo_core.data.source_mixture)\n"
    return head + yaml_text(doc)


def levanter(weights: Any, paths: Mapping[str, str]) -> str:
    """Levanter / Marin ``LMMixtureDatasetConfig`` (YAML under ``data:``).

    ``weights``: ``{domain: w}``, or stages ``[(step, {domain: w}), ...]`` (staged weights).
    """
    if isinstance(weights, Mapping):
        names, train_weights = list(weights), rounded(weights)
    else:
        names = list(weights[0][1])
        train_weights = [[step, w] for step, w in weights]
    configs = {d: {"train_urls": [paths[d]]} for d in names}
    return yaml_text({"data": {"configs": configs, "train_weights": train_weights}})


def mosaic(weights: Mapping[str, float], paths: Mapping[str, str]) -> str:
    """Mosaic ``streaming`` ``streams`` (YAML): ``remote`` for URLs, else ``local``."""
    streams = {
        d: {("remote" if "://" in paths[d] else "local"): paths[d], "proportion": w}
        for d, w in rounded(weights).items()
    }
    return yaml_text({"streams": streams})


def plain_json(weights: Any, paths: Mapping[str, str]) -> str:
    """``{domain: w}``, or ``[{"step": s, "weights": {...}}, ...]`` for stages."""
    del paths  # plain weights: the consumer knows its data
    return json.dumps(_plain(weights), indent=2) + "\n"


def plain_yaml(weights: Any, paths: Mapping[str, str]) -> str:
    """The same as ``plain_json``, as YAML."""
    del paths
    return yaml_text(_plain(weights))


def _plain(weights: Any) -> Any:
    if isinstance(weights, Mapping):
        return rounded(weights)
    return [{"step": step, "weights": w} for step, w in weights]


# ------------------------------------------------------------------ a small YAML writer

_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n"}


def yaml_text(value: Any) -> str:
    """Block YAML of dicts, lists and scalars (no PyYAML needed; strings quoted as JSON).

    A list inside a list (a Levanter stage ``[step, {...}]``) is one flow item, which is JSON.
    """
    return "\n".join(_yaml_lines(value, 0)) + "\n"


def _key(key: str) -> str:
    return key if _BARE.match(key) and key.lower() not in _RESERVED else json.dumps(key)


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        out = []
        for k, v in value.items():
            if _scalar(v):
                out.append(f"{pad}{_key(str(k))}: {_flow(v)}")
            else:
                out.append(f"{pad}{_key(str(k))}:")
                out.extend(_yaml_lines(v, indent + 2))
        return out
    out = []
    for item in value:  # a list of dicts or scalars
        flow = _scalar(item) or isinstance(item, (list, tuple))
        lines = [_flow(item)] if flow else _yaml_lines(item, indent + 2)
        out.append(f"{pad}- {lines[0].lstrip()}")
        out.extend(lines[1:])
    return out


def _scalar(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def _flow(value: Any) -> str:
    return json.dumps(value)
