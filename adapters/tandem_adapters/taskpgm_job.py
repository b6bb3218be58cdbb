"""TaskPGM as a job: single-task fine-tunes, probe divergences, a static mixture.

Each training domain is one task. Steps (docs/methods.md, "TaskPGM: Steps"): (1) from one base
model (``[model]``, its seed), fine-tune a fresh copy on each task alone for
``taskpgm.finetune_steps`` steps; (2) stream the probe set batch by batch through the base and
the N fine-tuned models, accumulating on device the pairwise token-mean Jensen–Shannon
divergences ``D`` and each model's probe loss; (3)-(5) affinity ``S``, utility ``u`` and the
mixture ``p`` (or a greedy subset) by ``tandem_core.taskpgm_mixture``. The run directory gets
``mixture.json`` (the ``optimize`` format, method ``"taskpgm"``: ``tandem train --mixture``
reads it), ``taskpgm.json`` (D, S, u, p, losses, settings), ``affinity.png``, ``config.toml``
and ``metrics.jsonl`` (the fine-tunes' logs).

Memory: every fine-tuned model stays in memory until the probe pass ends, each inside its
backend engine (proxy and reference copies plus two optimizer states: about 6x the
parameters with AdamW), so N + 1 trainers are alive at once. Fine for small models; for large
ones LoRA adapters on a shared base are the way (docs/methods.md, "TaskPGM: Cost"), and are
not implemented here. On JAX each trainer compiles its own steps (N compilations of the same
step; a persistent compilation cache, ``jax_compilation_cache_dir``, turns all but the first
into cache hits).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

import tandem_core as tc
from tandem_core.run import RunResult

from .config import JobConfig
from .data import DataError, DomainCorpus, from_arrays
from .data.windows import cut_rows, first_starts
from .jobs import build_run, load_corpus, read_path
from .run_dir import RunDir, atomic_write

__all__ = ["TaskPGMOutput", "probe_batches", "run_taskpgm"]

TASKPGM_FORMAT = "tandem-taskpgm"


@dataclass
class TaskPGMOutput:
    """What ``run_taskpgm`` produced (host numpy, float64)."""

    tasks: tuple[str, ...]  # the N tasks (training domains)
    p: np.ndarray  # (N,) the mixture, on the simplex
    D: np.ndarray  # (N, N) token-mean pairwise JSD on the probe set (nats)
    S: np.ndarray  # (N, N) affinity used
    u: np.ndarray  # (N,) standardised utility used
    subset: tuple[str, ...] | None  # greedy selection (taskpgm.budget > 0), in order
    probe_groups: tuple[str, ...]  # the probe streams (validation / target domains)
    base_loss: np.ndarray  # (G,) base model's token-mean loss per probe group
    group_loss: np.ndarray  # (N, G) fine-tuned model i's loss per probe group
    task_loss: np.ndarray  # (N,) fine-tuned model i's loss on the whole probe set
    probe_tokens: int  # scored probe tokens
    result: RunResult  # what mixture.json holds
    run_dir: Path
    known_answer: dict | None = None  # the corpus's (synthetic suites), see ``make_suite``


class _ProbeState(NamedTuple):
    """Device accumulators of the probe pass."""

    jsd: tc.PairwiseJSD  # over the N fine-tuned models
    loss: Any  # (N + 1, G) token NLL sums: row 0 the base model, row i + 1 model i
    tokens: Any  # (G,) scored tokens per probe group


def run_taskpgm(
    cfg: JobConfig,
    *,
    tasks: DomainCorpus | str | os.PathLike | None = None,
    probe: DomainCorpus | Mapping[str, Any] | str | os.PathLike | None = None,
    overwrite: bool = False,
    echo: Callable[[str], Any] = print,
) -> TaskPGMOutput:
    """Learn a static task mixture with TaskPGM and write it to ``cfg.run.run_dir``.

    Args:
        cfg: the job; ``[taskpgm]`` holds the method's settings, ``[train]`` the fine-tunes'
            optimiser and batch sizes (its ``method``/``steps`` are replaced), ``run.backend``
            the backend.
        tasks: the tasks: a ``DomainCorpus`` (its training domains), a folder (as
            ``data.path``, with ``cfg.data``'s validation options), or None for ``cfg.data``.
        probe: the probe set: None for ``taskpgm.probe`` or else the corpus's validation
            streams (per task, or the target set); a file or folder (tokenized like the data);
            a ``DomainCorpus`` (its validation streams, else its training ones); or a dict of
            name -> token stream.
        overwrite: replace a previous run in the run directory.
        echo: progress lines.

    Returns:
        ``TaskPGMOutput``.

    Raises:
        DataError: no probe data, probe tokens outside the vocabulary, ``affinity="pmi"``
            without one probe stream per task.
        FileExistsError: the run directory holds a run and ``overwrite`` is False.
    """
    if isinstance(tasks, (str, os.PathLike)):
        cfg = cfg.replace(data={"path": str(tasks)})
    corpus = tasks if isinstance(tasks, DomainCorpus) else load_corpus(cfg.data)
    t = cfg.taskpgm
    probe = probe if probe is not None else (t.probe or None)
    names, streams = _probe_streams(cfg, corpus, probe)
    if t.affinity == "pmi" and names != corpus.domains:
        raise DataError(
            "taskpgm.affinity='pmi' needs one probe stream per task (per-domain validation: "
            f"data.val_path or data.val_fraction); the probe streams are {list(names)}"
        )
    batches = probe_batches(streams, cfg.data.seq_len, t.probe_max_per_task, t.probe_batch_size)
    rd = RunDir(cfg.run.run_dir, overwrite=overwrite)
    rd.write_config(cfg.to_mapping())
    rd.rewrite_metrics([])  # not resumable: no rows of an earlier, unfinished attempt
    ft = cfg.replace(train={"method": "natural", "steps": t.finetune_steps})
    n = corpus.num_domains
    echo(
        f"taskpgm: {n} tasks, {t.finetune_steps} fine-tune steps each ({cfg.run.backend}); "
        f"probe: {len(batches)} batches from {list(names)}"
    )
    engines = [build_run(ft, _single(corpus, 0), transform=tc.natural([1.0])).engine]  # base
    for i, task in enumerate(corpus.domains):
        callback = partial(_log_row, rd, task)
        run = build_run(ft, _single(corpus, i), transform=tc.natural([1.0]), callback=callback)
        result = run.run(cfg.run.progress)
        losses = [m["train_loss_avg"] for m in result.metrics if "train_loss_avg" in m]
        loss = losses[-1] if losses else float("nan")
        echo(f"  fine-tuned {i + 1}/{n} {task!r}: {result.steps} steps, train loss {loss:.4f}")
        engines.append(run.engine)
    state = _probe_pass(engines, batches, len(names), t.top_k or None, cfg.run.progress)
    D = _host(tc.jsd_result(state.jsd))
    loss_sum, tokens = _host(state.loss), _host(state.tokens)
    group = loss_sum / np.maximum(tokens, 1.0)  # (N + 1, G)
    whole = loss_sum.sum(axis=1) / max(tokens.sum(), 1.0)  # (N + 1,)
    pgm = _solve(t, D, group, whole)
    subset = None if pgm.subset is None else tuple(corpus.domains[i] for i in pgm.subset)
    out = TaskPGMOutput(
        tasks=corpus.domains,
        p=pgm.p,
        D=D,
        S=pgm.S,
        u=pgm.u,
        subset=subset,
        probe_groups=names,
        base_loss=group[0],
        group_loss=group[1:],
        task_loss=whole[1:],
        probe_tokens=int(tokens.sum()),
        result=RunResult(
            domains=corpus.domains,
            method="taskpgm",
            average=pgm.p,
            last=pgm.p,
            trajectory=pgm.p[None, :],
            steps=n * t.finetune_steps,
            val_domains=names,
        ),
        run_dir=rd.path,
        known_answer=corpus.known_answer,
    )
    _write(rd, cfg, out, float(whole[0]))
    return out


def probe_batches(
    streams: tuple[np.ndarray, ...], seq_len: int, max_per_stream: int, batch_size: int
) -> list[dict]:
    """Fixed-size probe batches: the first non-overlapping windows of each stream.

    Each batch holds rows of one stream only (``domain`` = its index, for per-stream losses);
    the last batch of a stream is padded with ignored rows (labels ``IGNORE_INDEX``), so every
    batch has the same shape and a jitted forward compiles once.

    Returns:
        Dicts of int32 ``tokens``, ``labels`` ``(batch_size, seq_len)`` and ``domain``.
    """
    out = []
    for g, stream in enumerate(streams):
        tokens, labels = cut_rows(stream, first_starts(stream, seq_len, max_per_stream), seq_len)
        for s in range(0, tokens.shape[0], batch_size):
            pad = batch_size - tokens[s : s + batch_size].shape[0]
            out.append(
                {
                    "tokens": np.pad(tokens[s : s + batch_size], ((0, pad), (0, 0))),
                    "labels": np.pad(
                        labels[s : s + batch_size],
                        ((0, pad), (0, 0)),
                        constant_values=tc.IGNORE_INDEX,
                    ),
                    "domain": np.full(batch_size, g, dtype=np.int32),
                }
            )
    return out


def _host(x: Any) -> np.ndarray:
    """A device array as host float64 numpy."""
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def _single(corpus: DomainCorpus, i: int) -> DomainCorpus:
    """Task ``i`` alone (no validation: the probe pass measures every model)."""
    return DomainCorpus((corpus.domains[i],), (corpus.train[i],), (), (), corpus.vocab_size, None)


def _log_row(rd: RunDir, task: str, row: dict) -> None:
    rd.append_metrics({"task": task, **row})


def _probe_streams(
    cfg: JobConfig, corpus: DomainCorpus, probe: Any
) -> tuple[tuple[str, ...], tuple[np.ndarray, ...]]:
    """Names and token streams of the probe set (see ``run_taskpgm``)."""
    if probe is None:
        if not corpus.val:
            raise DataError(
                "TaskPGM needs a probe set: per-task validation (data.val_path, "
                "data.val_fraction), a target set (data.target_path) or taskpgm.probe / --probe"
            )
        return corpus.val_domains, corpus.val
    if isinstance(probe, DomainCorpus):
        if probe.vocab_size > corpus.vocab_size:
            raise DataError(f"probe vocabulary {probe.vocab_size} > tasks' {corpus.vocab_size}")
        return (probe.val_domains, probe.val) if probe.val else (probe.domains, probe.train)
    if isinstance(probe, Mapping):
        got = from_arrays(probe, vocab_size=corpus.vocab_size)
        return got.domains, got.train
    return read_path(cfg.data, Path(probe), vocab_size=corpus.vocab_size)


def _probe_pass(
    engines: list, batches: list[dict], groups: int, top_k: int | None, progress: bool
) -> _ProbeState:
    """Stream the probe batches through every model; device accumulators (TaskPGM step 2)."""
    from tqdm.auto import tqdm

    step = partial(_probe_step, top_k=top_k)  # one object: the JAX engine compiles it once
    state = vocab = None
    for batch in tqdm(batches, desc="probe", disable=None if progress else True):
        logits = tuple(e.predict_logits(batch) for e in engines)
        xp = array_api_compat.array_namespace(logits[0])
        device = array_api_compat.device(logits[0])
        if state is None:
            jsd = tc.jsd_init(len(engines) - 1, xp=xp, device=device)
            dtype = jsd.sum.dtype
            state = _ProbeState(
                jsd,
                xp.zeros((len(engines), groups), dtype=dtype, device=device),
                xp.zeros((groups,), dtype=dtype, device=device),
            )
            vocab = xp.arange(logits[0].shape[-1], device=device)
        onehot = np.zeros(groups)
        onehot[int(batch["domain"][0])] = 1.0
        stats = (
            logits,
            vocab,
            xp.asarray(batch["labels"], device=device),
            xp.asarray(onehot, dtype=state.tokens.dtype, device=device),
        )
        state = engines[0].apply(step, state, stats)  # jitted on JAX, eager on torch
    if state is None:
        raise DataError("the probe set has no windows")
    return state


def _probe_step(state: _ProbeState, stats: tuple, *, top_k: int | None) -> _ProbeState:
    """One probe batch: pairwise JSD of models 1..N, token NLL sums of models 0..N (pure)."""
    logits, vocab, labels, onehot = stats  # (N + 1) x (B, T, V); (V,); (B, T) int; (G,) float
    xp = array_api_compat.array_namespace(labels)
    mask = labels != tc.IGNORE_INDEX
    jsd = tc.jsd_update(state.jsd, xp.stack(logits[1:]), mask, top_k=top_k)
    dtype = state.tokens.dtype
    hit = xp.reshape(labels, (*labels.shape, 1)) == xp.reshape(vocab, (1, 1, -1))
    nll = []
    for x in logits:
        x = xp.astype(x, dtype)
        top = xp.max(x, axis=-1, keepdims=True)
        log_z = xp.log(xp.sum(xp.exp(x - top), axis=-1)) + top[..., 0]
        picked = xp.sum(xp.where(hit, x, xp.zeros_like(x)), axis=-1)
        nll.append(xp.sum(xp.where(mask, log_z - picked, xp.zeros_like(log_z))))
    count = xp.sum(xp.astype(mask, dtype))
    added = xp.reshape(xp.stack(nll), (-1, 1)) * xp.reshape(onehot, (1, -1))
    return _ProbeState(jsd, state.loss + added, state.tokens + count * onehot)


def _solve(t: Any, D: np.ndarray, group: np.ndarray, whole: np.ndarray) -> tc.TaskPGMResult:
    """TaskPGM steps 2-5 (docs/methods.md, "TaskPGM: Steps") on the host from the probe stats."""
    source = {"D": D}
    if t.affinity == "pmi":
        source = {"S": tc.pmi_affinity(group[1:], group[0])}
    # group_gain: per probe group (N, G) and (G,); the other utilities: the whole probe set
    per_group = t.utility == "group_gain"
    return tc.taskpgm_mixture(
        **source,
        utility=t.utility,
        val_loss=group[1:] if per_group else whole[1:],
        base_loss=group[0] if per_group else whole[0],
        mix=t.mix,
        affinity_kind="linear" if t.affinity == "pmi" else t.affinity,
        sigma=t.sigma or None,
        lam=t.lam,
        mu=t.mu or None,
        method=t.method,
        k=t.budget or None,
        weights=t.subset_weights,
        tau_e=t.tau_e,
    )


def _write(rd: RunDir, cfg: JobConfig, out: TaskPGMOutput, base: float) -> None:
    from .plots import plot_affinity

    t, names = cfg.taskpgm, list(out.tasks)
    rd.write_mixture(
        out.result,
        backend=cfg.run.backend,
        extra={
            "details": "taskpgm.json",
            "finetune_steps": t.finetune_steps,
            "known_answer": out.known_answer,
        },
    )
    mu = t.mu or tc.default_mu(out.S, t.lam)
    doc = {
        "format": TASKPGM_FORMAT,
        "version": 1,
        "tasks": names,
        "p": dict(zip(names, out.p.tolist())),
        "subset": None if out.subset is None else list(out.subset),
        "u": dict(zip(names, out.u.tolist())),
        "D": out.D.tolist(),
        "S": out.S.tolist(),
        "probe": {"groups": list(out.probe_groups), "tokens": out.probe_tokens},
        "base_loss": base,
        "base_group_loss": dict(zip(out.probe_groups, out.base_loss.tolist())),
        "task_loss": dict(zip(names, out.task_loss.tolist())),
        "group_loss": {
            task: dict(zip(out.probe_groups, row))
            for task, row in zip(names, out.group_loss.tolist())
        },
        "settings": {**asdict(t), "mu_used": mu, "backend": cfg.run.backend},
    }
    atomic_write(rd.path / "taskpgm.json", json.dumps(doc, indent=2) + "\n")
    plot_affinity(out.S, names, rd.path / "affinity.png", weights=out.p)
