"""The jobs behind the CLI, usable from Python.

``optimize`` learns a mixture, ``train`` trains with a fixed one (optionally with ADAPT per-sample
weights, ``train.weighting``), ``compare`` trains with the learned and the uniform mixture on the
same budget.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import tandem_core as tc
from tandem_core.backend import training_backend
from tandem_core.run import MixtureRun, RunResult, check_weighting

from .config import DataConfig, JobConfig, check_against_data, check_run_dir
from .data import (
    DataError,
    DomainCorpus,
    TokenSampler,
    from_arrays,
    load_folder,
    load_hf_dataset,
    load_tokenizer,
    make_suite,
)
from .data.formats import read_file
from .data.sft import build_sft_corpus, load_sft_tokenizer, read_records
from .data.streams import build_corpus
from .data.windows import cut_rows, first_starts
from .export import corpus_stats
from .run_dir import RunDir
from .trackers import Trackers, make_trackers

__all__ = [
    "Interrupted",
    "build_run",
    "compare",
    "load_anchors",
    "load_corpus",
    "optimize",
    "train",
]


class Interrupted(RuntimeError):
    """The job stopped on SIGTERM / SIGINT after saving a checkpoint (resume with --resume).

    ``signum``: the signal this process received (``None``: another process of the job did).
    """

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


def _tokenizer(data: DataConfig) -> Any:
    """``data.tokenizer`` loaded (None: the byte default); for SFT with its chat template."""
    if not data.tokenizer:
        return None
    # a Hugging Face tokenizer folder may carry a chat template, which SFT records use
    return (load_sft_tokenizer if data.format == "sft" else load_tokenizer)(data.tokenizer)


def load_corpus(data: DataConfig, *, progress: bool = True) -> DomainCorpus:
    """The training / validation domains the [data] table describes.

    ``progress``: a bar while text is tokenized into ``data.cache_dir`` (terminals only).
    """
    tokenizer = _tokenizer(data)
    if data.path:
        return load_folder(
            data.path,
            tokenizer=tokenizer,
            val_path=data.val_path or None,
            val_fraction=data.val_fraction,
            target_path=data.target_path or None,
            seed=data.seed,
            windows=data.windows,
            format=data.format,
            sft_layout=data.sft_layout,
            seq_len=data.seq_len,
            cache_dir=data.cache_dir,
            progress=progress,
            **data.file_options(),
        )
    if data.hf_dataset and data.hf_streaming:  # never tokenized whole: a buffer per domain
        from .data.hf import stream_hf_dataset

        return stream_hf_dataset(
            data.hf_dataset,
            domain_field=data.domain_field,
            text_field=data.text_field,
            tokenizer=tokenizer,
            val_tokens=data.stream_val_tokens,
            buffer_tokens=data.stream_buffer_tokens,
        )
    if data.hf_dataset:
        return load_hf_dataset(
            data.hf_dataset,
            domain_field=data.domain_field,
            text_field=data.text_field,
            tokenizer=tokenizer,
            val_fraction=data.val_fraction,
            seed=data.seed,
            cache_dir=data.cache_dir,
        )
    return make_suite(
        data.suite,
        seed=data.seed,
        vocab_size=data.suite_vocab_size,
        tokens_per_domain=data.suite_tokens_per_domain,
        val=data.suite_val,
        sft_layout=data.sft_layout,
    )


def load_anchors(cfg: JobConfig, corpus: DomainCorpus, anchor: Any = None) -> list[dict] | None:
    """ADAPT's anchor set as batches: the first ``train.adapt_anchor_max`` windows per stream.

    Args:
        cfg: the job (``data`` table: tokenizer, text field, ``seq_len``; ``train.adapt_anchor``).
        corpus: the training corpus (its vocabulary bounds the anchor tokens).
        anchor: a file or folder (read like training data: one stream per file or domain), a
            ``DomainCorpus`` (its validation streams, else its training streams), a mapping of
            name -> tokens or documents, or ``None`` for ``train.adapt_anchor``.

    Returns:
        Host batches, or ``None`` when no anchor is given (the run then anchors on the corpus's
        validation / target set).
    """
    source = anchor if anchor is not None else (cfg.train.adapt.adapt_anchor or None)
    if source is None:
        return None
    if isinstance(source, DomainCorpus):
        streams = source.val or source.train
    elif isinstance(source, Mapping):
        streams = from_arrays(source, vocab_size=corpus.vocab_size).train
    else:
        streams = _read_streams(cfg, Path(source))
    seq_len, rows = cfg.data.seq_len, cfg.train.adapt.adapt_anchor_max
    name = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
    out = []
    for stream in streams:
        # Only the anchor rows are checked: a sharded anchor stream is never read whole.
        tokens, labels = cut_rows(stream, first_starts(stream, seq_len, rows), seq_len)
        top = int(max(tokens.max(initial=0), labels.max(initial=0)))
        if top >= corpus.vocab_size:
            raise DataError(
                f"anchor {name}: token id {top} is outside the training data's "
                f"vocabulary [0, {corpus.vocab_size}): tokenize the anchors like the training "
                "data (data.tokenizer)"
            )
        out.append({"tokens": tokens, "labels": labels, "domain": np.zeros(len(tokens), np.int32)})
    return out


def read_path(
    data: DataConfig, path: Path, *, vocab_size: int | None = None
) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """Domains and token streams of a file (one domain) or a folder (one per entry).

    Read as the ``[data]`` table reads its data: text or token files, or instruction records
    with ``data.format = "sft"`` (prompts carry no loss). ``vocab_size``: the bound the ids
    must respect (default: the tokenizer's, or the ids' own).
    """
    tokenizer = _tokenizer(data)
    if data.format == "sft":
        options = {"tokenizer": tokenizer, "seq_len": data.seq_len, "vocab_size": vocab_size}
        if path.is_file():
            parts = {path.stem: [(str(path), read_records(path))]}
            got = build_sft_corpus(parts, {}, layout=data.sft_layout, **options)
        else:
            got = load_folder(path, format="sft", sft_layout=data.sft_layout, **options)
        return got.domains, got.train
    if path.is_file():
        parts = [(str(path), read_file(path, **data.file_options()))]
        got = build_corpus({path.stem: parts}, {}, tokenizer=tokenizer, vocab_size=vocab_size)
    else:
        options = data.file_options()
        got = load_folder(path, tokenizer=tokenizer, vocab_size=vocab_size, **options)
    return got.domains, got.train


def _read_streams(cfg: JobConfig, path: Path) -> tuple[Any, ...]:
    """Anchor streams of a file or folder (``read_path``); names the option when missing.

    The vocabulary is the tokenizer's (or the ids' own): ``load_anchors`` then names an id
    beyond the training data's vocabulary.
    """
    if not path.exists():
        raise DataError(f"{path}: anchor file or folder not found (--anchor, train.adapt_anchor)")
    return read_path(cfg.data, path)[1]


def build_run(
    cfg: JobConfig,
    corpus: DomainCorpus,
    *,
    transform: tc.MixtureTransform | None = None,
    callback: Callable[[dict], None] | None = None,
    anchors: list[dict] | None = None,
) -> MixtureRun:
    """Sampler, model, the backend's engine and the run loop for a job (``anchors``: ADAPT's)."""
    backend = training_backend(cfg.run.backend)
    backend.setup(cfg.backend)
    sampler = TokenSampler(corpus, cfg.data.seq_len, seed=cfg.train.seed)
    model = backend.build_model(cfg.model, vocab_size=corpus.vocab_size, seq_len=cfg.data.seq_len)
    engine = backend.make_engine(
        model,
        cfg.train,
        num_domains=len(corpus.domains),
        num_val_domains=len(corpus.val_domains),
        options=cfg.backend,
    )
    return MixtureRun(
        engine, sampler, cfg.train, transform=transform, callback=callback, anchors=anchors
    )


def rank(cfg: JobConfig) -> int:
    """This process's rank: 0 writes the run directory; the others only compute."""
    return training_backend(cfg.run.backend).rank(cfg.backend)


def _trackers(cfg: JobConfig, rd: RunDir, *, resume: bool) -> Trackers:
    """metrics.jsonl's writer, then ``run.report_to``'s trackers (rank 0 only: read-only ``rd``)."""
    names = () if rd.read_only else cfg.run.report_to
    return make_trackers(names, rd.path, cfg.to_mapping(), then=rd.append_metrics, resume=resume)


def _run_dir(cfg: JobConfig, *, resume: bool, overwrite: bool) -> RunDir:
    return RunDir(cfg.run.run_dir, resume=resume, overwrite=overwrite, read_only=rank(cfg) != 0)


def _fingerprint(cfg: JobConfig, run: MixtureRun) -> dict:
    """What a checkpoint is made from: the configuration (less where it writes) and the data."""
    from .fingerprint import data_fingerprint, plain

    mapping = _resume_mapping(cfg)
    data = data_fingerprint(
        cfg.data,
        getattr(run.sampler, "corpus", None),
        anchors=None if run.weighting is None else run.weighting.anchors,
        anchor_path=cfg.train.adapt.adapt_anchor or "",
    )
    return {"config": plain(mapping), "data": data}


def _resume_mapping(cfg: JobConfig) -> dict:
    """The configuration a resume must match: less where the run writes and where it caches."""
    mapping = cfg.to_mapping()
    mapping["run"] = {"backend": cfg.run.backend}
    mapping["data"].pop("cache_dir", None)  # the cache holds the same tokens wherever it is
    return mapping


@contextlib.contextmanager
def _stop_on_signals(run: MixtureRun):
    """SIGTERM / SIGINT ask the loop to stop after the current tick (never mid-step)."""
    flag = {"stop": None}
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)
    run.should_stop = lambda: flag["stop"] is not None
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _execute(
    cfg: JobConfig, run: MixtureRun, rd: RunDir, *, resume: bool, echo: Callable
) -> RunResult:
    """Resume (same config and data only) or start, run, checkpoint; a failed run frees ``rd``."""
    from .fingerprint import check_resume, plain

    # backend.checkpoint="sharded": every process writes its shards under checkpoint.sharded (its
    # backend's library: torch.distributed.checkpoint, orbax), process 0 the host state
    sharded = getattr(run.engine, "checkpoint_format", "npz") == "sharded"
    where = rd.shards if sharded else rd.checkpoint
    try:
        fingerprint = _fingerprint(cfg, run)
        if resume:
            state, meta = rd.load_sharded(run.engine) if sharded else rd.load_checkpoint()
            # the defaults of this backend (another backend's Options may not be installed)
            default = JobConfig.from_mapping({"run": {"backend": cfg.run.backend}})
            defaults = plain(_resume_mapping(default))
            check_resume(meta, fingerprint, where, echo, defaults=defaults)
            run.load_state_dict(state)
            rd.rewrite_metrics(run.metrics)
            echo(f"resuming {rd.path} at proxy step {run.proxy_step}")
        else:
            rd.write_config(cfg.to_mapping())

        def save(r: MixtureRun) -> None:
            meta = {**fingerprint, "step": r.proxy_step}
            if sharded:
                rd.save_sharded(r.engine, r.state_dict(), step=r.proxy_step, metadata=meta)
            else:
                rd.save_checkpoint(r.state_dict(), metadata=meta)

        with _stop_on_signals(run) as flag:
            result = run.run(
                cfg.run.progress,
                checkpoint=save,
                checkpoint_every=cfg.run.checkpoint_every,
                stop_every=cfg.run.stop_check_every,
            )
            save(run)
            if not run.done:  # a signal here, or on another process of the job
                cause = "another process" if flag["stop"] is None else f"signal {flag['stop']}"
                raise Interrupted(
                    f"stopped by {cause} at proxy step {run.proxy_step}; "
                    f"checkpoint saved in {where}: continue with --resume",
                    flag["stop"],
                )
    except BaseException:
        rd.close()  # the run is over: free the directory now, not when the traceback goes
        raise
    return result


def optimize(
    cfg: JobConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable = print,
    corpus: DomainCorpus | None = None,
) -> RunResult:
    """Learn a mixture with ``cfg.train.method``; writes the run directory; returns the result.

    ``corpus``: the data ``cfg.data`` describes, if the caller has read it already.
    Everything that can fail on the configuration or the data (the model, the plan) is checked
    before the run directory is created.
    """
    check_weighting(cfg.train)  # before anything is read or written
    if rank(cfg) == 0:
        check_run_dir(cfg.run.run_dir)
    corpus = load_corpus(cfg.data, progress=cfg.run.progress) if corpus is None else corpus
    needs_val = cfg.train.method_record.signal.needs_val
    check_against_data(cfg, corpus, needs_val=needs_val or cfg.train.weighting != "none")
    run = build_run(cfg, corpus)
    rd = _run_dir(cfg, resume=resume, overwrite=overwrite)
    run.callback = trackers = _trackers(cfg, rd, resume=resume)
    result = _execute(cfg, run, rd, resume=resume, echo=echo)
    stats = corpus_stats(corpus, cfg.data)  # tokens and examples per domain (tandem export)
    extra = {"known_answer": corpus.known_answer, "domain_stats": stats}
    rd.write_mixture(result, backend=cfg.run.backend, extra=extra)
    trackers.finish(rd.mixture)
    _plot(rd, result)
    return result


def train(
    cfg: JobConfig,
    weights: dict[str, float] | None,
    *,
    anchor: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable = print,
) -> RunResult:
    """Train a fresh model with a FIXED mixture (``None``: uniform); per-domain validation loss.

    With ``cfg.train.weighting`` ``"adapt"`` or ``"bm25"`` every sample's loss is also weighted
    by its similarity to the anchor set (docs/methods.md, "ADAPT"): ``anchor`` (see
    ``load_anchors``), else ``train.adapt_anchor``, else the validation / target set.
    mixture.json then records the weighting and the mean weight per domain
    (``result.weighting``).

    Example (Python API)::

        cfg = JobConfig.load(overrides=["train.steps=200", "train.weighting=adapt"])
        result = train(cfg, None, anchor="my_target.txt")
        result.weighting["weight_by_domain"]  # {domain: mean weight}
    """
    if rank(cfg) == 0:
        check_run_dir(cfg.run.run_dir)
    corpus = load_corpus(cfg.data, progress=cfg.run.progress)
    alpha = _align(weights, corpus.domains)
    cfg = cfg.replace(train={"method": "natural"})  # a static mixture: no twins, no updates
    check_against_data(cfg, corpus, needs_val=True)  # the result is the validation loss
    if anchor is not None and not isinstance(anchor, (str, os.PathLike)):
        anchor_name = type(anchor).__name__  # in-memory anchors: not part of config.toml
    else:
        if anchor is not None:
            cfg = cfg.replace(train={"adapt_anchor": str(anchor)})  # recorded, checked on resume
        anchor_name = cfg.train.adapt.adapt_anchor or "validation set"
    anchors = load_anchors(cfg, corpus, anchor) if cfg.train.weighting != "none" else None
    run = build_run(cfg, corpus, transform=tc.natural(alpha), anchors=anchors)
    rd = _run_dir(cfg, resume=resume, overwrite=overwrite)
    run.callback = trackers = _trackers(cfg, rd, resume=resume)
    result = _execute(cfg, run, rd, resume=resume, echo=echo)
    extra: dict[str, Any] = {"fixed": True}
    if result.weighting is not None:
        extra["weighting"] = {**result.weighting, "anchor": anchor_name}
    rd.write_mixture(result, backend=cfg.run.backend, extra=extra)
    trackers.finish(rd.mixture)
    _plot(rd, result)
    return result


def compare(
    cfg: JobConfig, weights: dict[str, float], *, overwrite: bool = False, echo: Callable = print
) -> dict:
    """Learned vs uniform: train a fresh model with each for the same budget and seed.

    Returns:
        ``{"domains": [...], "learned": {val_domain: loss}, "uniform": {...}}`` (also written to
        ``run_dir/compare.json`` with a bar chart ``compare.png``).
    """
    from .plots import plot_compare
    from .run_dir import atomic_write

    base = cfg.run.run_dir
    out: dict[str, Any] = {}
    for name, w in (("learned", weights), ("uniform", None)):
        sub = cfg.replace(run={"run_dir": f"{base}/{name}"})
        result = train(sub, w, overwrite=overwrite, echo=echo)
        out[name] = dict(zip(result.val_domains, map(float, result.val_losses)))
        out["domains"] = list(result.domains)
        out[f"{name}_weights"] = dict(zip(result.domains, map(float, result.average)))
    import json

    atomic_write(f"{base}/compare.json", json.dumps(out, indent=2) + "\n")
    plot_compare(out, f"{base}/compare.png")
    return out


def _align(weights: dict[str, float] | None, domains: tuple[str, ...]) -> list[float]:
    if weights is None:
        return [1.0] * len(domains)
    missing = [d for d in domains if d not in weights]
    extra = [d for d in weights if d not in domains]
    if missing or extra:
        raise tc.ConfigError(
            f"the mixture's domains do not match the data: missing {missing}, unknown {extra}"
        )
    alpha = np.array([weights[d] for d in domains], dtype=float)
    if (alpha <= 0).all():
        raise tc.ConfigError("the mixture gives no weight to any domain")
    return [max(w, 1e-12) for w in alpha]  # natural() needs positive sizes


def _plot(rd: RunDir, result: RunResult) -> None:
    if rd.read_only:
        return
    from .plots import plot_run

    plot_run(result, rd.read_metrics(), rd.plot)
