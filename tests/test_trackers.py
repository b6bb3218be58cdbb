"""Experiment trackers (run.report_to): TensorBoard event files and offline wandb runs."""

import importlib.util
import json

import numpy as np
import pytest
from utils import a_backend, set_args, small_job

from tandem_adapters import trackers
from tandem_adapters.cli import main
from tandem_adapters.config import JobConfig
from tandem_core import ConfigError

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard"
)
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb")


def _optimize(run_dir, *extra, steps=30):
    sets = [
        *small_job(),
        f"run.backend={a_backend()}",
        f'run.run_dir="{run_dir}"',
        f"train.steps={steps}",
        *extra,
    ]
    assert main(["optimize", *set_args(*sets), "-q"]) == 0
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _scalars(log_dir):
    """``{tag: {step: value}}`` of every event file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    return out, acc


def test_flatten_makes_per_domain_keys():
    row = {"step": 10, "alpha": {"a": 0.25, "b": 0.75}, "nonfinite": 0, "weighting": "adapt"}
    row["delta"] = {"a": float("nan")}
    flat = trackers.flatten(row)
    assert set(flat) == {"alpha/a", "alpha/b", "nonfinite", "delta/a"}
    assert flat["alpha/b"] == 0.75 and np.isnan(flat["delta/a"])


def test_report_to_is_checked_naming_the_key(monkeypatch):
    backend = f"run.backend={a_backend()}"
    with pytest.raises(ConfigError, match=r"run\.report_to.*'mlflow'"):
        JobConfig.load(overrides=[backend, "run.report_to=mlflow"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"run\.report_to='wandb'.*tandem-mixture\[wandb\]"):
        JobConfig.load(overrides=[backend, "run.report_to=wandb"])
    assert JobConfig.load(overrides=[backend]).run.report_to == []


@needs_tensorboard
def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    rows = _optimize(run, "run.report_to=tensorboard")
    scalars, acc = _scalars(run / "tb")
    domains = list(rows[-1]["alpha"])
    for d in domains:
        want = {r["step"]: r["alpha"][d] for r in rows}
        assert scalars[f"alpha/{d}"] == pytest.approx(want, rel=1e-6)
    assert {"train_loss_avg", "nonfinite", "mixture_updates"} <= set(scalars)
    assert any(t.startswith("delta/") for t in scalars)  # TANDEM's Delta, per domain
    assert any(t.startswith("val_loss/") for t in scalars)  # the final evaluation
    assert "mixture/text_summary" in acc.Tags()["tensors"]  # the mixture as a text summary


@needs_tensorboard
def test_tensorboard_resume_continues_without_duplicate_steps(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tandem_adapters.jobs import optimize

    run = tmp_path / "run"
    sets = [*small_job(), f"run.backend={a_backend()}", f'run.run_dir="{run}"', "train.steps=40"]
    cfg = JobConfig.load(overrides=[*sets, "run.report_to=tensorboard", "run.progress=false"])
    log = trackers.TensorBoardTracker.log

    def crash_at_30(self, row, step):  # logged, then the process "dies"
        log(self, row, step)
        if step == 30:
            raise RuntimeError("killed")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log", crash_at_30)
    with pytest.raises(RuntimeError, match="killed"):
        optimize(cfg.replace(run={"checkpoint_every": 20}), echo=lambda *a: None)
    monkeypatch.setattr(trackers.TensorBoardTracker, "log", log)
    optimize(cfg.replace(run={"checkpoint_every": 20}), resume=True, echo=lambda *a: None)
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # step 30 (logged before the crash, again after the resume) shows once
    assert [e.step for e in acc.Scalars("nonfinite")] == [r["step"] for r in rows]
    assert [r["step"] for r in rows][:4] == [10, 20, 30, 40]
    assert len(list((run / "tb").glob("events.*"))) == 2


def _wandb_records(path):
    """The protobuf records of an offline run's .wandb file.

    The file is a LevelDB-style log (wandb's own format, no public reader in wandb >= 0.19): a
    7-byte header, then 32 KiB blocks of records (crc32, length, type: 1 full, 2 first, 3
    middle, 4 last), each record (or concatenation) one ``wandb_internal_pb2.Record``.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, i, part, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while i + 7 <= len(data):
        if block - i % block < 7:  # a block's tail too short for a header is padding
            i += block - i % block
            continue
        _, n, kind = struct.unpack("<IHB", data[i : i + 7])
        if kind == 0:
            break
        part, i = part + data[i + 7 : i + 7 + n], i + 7 + n
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(part))
            part = b""
    return out


def _items(items):
    return {"/".join(it.nested_key) or it.key: json.loads(it.value_json) for it in items}


@needs_wandb
def test_wandb_offline_run_holds_the_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    rows = _optimize(run, "run.report_to=wandb")
    (folder,) = (run / "wandb").glob("offline-run-*")
    run_id = (run / "wandb_id.txt").read_text().strip()
    assert folder.name.endswith(run_id)
    records = _wandb_records(folder / f"run-{run_id}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    history = [_items(r.history.item) for r in records if r.HasField("history")]
    by_step = {h["_step"]: h for h in history}
    for r in rows:
        for d, w in r["alpha"].items():
            assert by_step[r["step"]][f"alpha/{d}"] == pytest.approx(w)
    assert {"twin_distance", "nonfinite", "train_loss_avg"} <= set(history[0])
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(_items(r.summary.update))
    mixture = json.loads((run / "mixture.json").read_text())
    for d, w in mixture["average"].items():
        assert summary[f"mixture/average/{d}"] == pytest.approx(w)
    assert "artifact" in kinds  # mixture.json


@needs_tensorboard
def test_make_trackers_is_a_mixture_run_callback(tmp_path):
    from tandem_adapters.jobs import build_run, load_corpus

    cfg = JobConfig.load(overrides=[*small_job(), f"run.backend={a_backend()}", "train.steps=20"])
    corpus = load_corpus(cfg.data, progress=False)
    tracker = trackers.make_trackers(["tensorboard"], tmp_path, cfg.to_mapping())
    run = build_run(cfg, corpus, callback=tracker)  # a MixtureRun with our callback
    run.run(False)
    tracker.finish(None)
    scalars, _ = _scalars(tmp_path / "tb")
    for d in corpus.domains:
        assert scalars[f"alpha/{d}"] == {
            r["step"]: pytest.approx(r["alpha"][d]) for r in run.metrics
        }
