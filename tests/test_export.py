"""``tandem export``: each format read back by its own parser, known answers, options, errors.

Run directories are written by hand (mixture.json, config.toml) except in one end-to-end test.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from utils import a_backend, set_args, small_job

from tandem_adapters import export as ex
from tandem_adapters.cli import main

yaml = pytest.importorskip("yaml")

STATS = {  # 10 and 100 tokens per example
    "code": {"tokens": 1000, "examples": 100, "estimated": False},
    "web": {"tokens": 100000, "examples": 1000, "estimated": False},
}


def _run_dir(tmp_path: Path, *, stats=STATS, data_path: Path | None = None) -> Path:
    """A run directory as ``RunDir.write_mixture`` lays it out (two domains, 4 updates)."""
    run = tmp_path / "run"
    run.mkdir()
    doc = {
        "format": "tandem-mixture",
        "version": 1,
        "method": "tandem",
        "backend": "torch",
        "domains": ["code", "web"],
        "average": {"code": 0.5, "web": 0.5},
        "last": {"code": 0.8, "web": 0.2},
        "trajectory": [[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]],
        "steps": 40,
        "val_domains": [],
        "val_loss": None,
        **({"domain_stats": stats} if stats is not None else {}),
    }
    (run / "mixture.json").write_text(json.dumps(doc))
    data = f'[data]\npath = "{data_path}"\n' if data_path else "[data]\n"
    (run / "config.toml").write_text(data)
    return run


def _export(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_per_example_known_answer():
    p = ex.per_example({"a": 0.5, "b": 0.5}, {"a": 10, "b": 100})
    assert p["a"] == pytest.approx(10 / 11) and p["b"] == pytest.approx(1 / 11)


def test_rounded_sums_to_one():
    w = ex.rounded({f"d{i}": 1 / 7 for i in range(7)})
    assert abs(sum(w.values()) - 1) < 1e-12 and all(len(repr(v)) < 16 for v in w.values())


def test_hf_probabilities_drive_interleave_datasets(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    status, out, _ = _export(capsys, _run_dir(tmp_path), "--to", "hf")
    assert status == 0
    cfg = json.loads(out)
    assert cfg["probabilities"] == pytest.approx([10 / 11, 1 / 11], abs=1e-6)
    parts = [datasets.Dataset.from_dict({"d": [d] * 5000}) for d in cfg["domains"]]
    mixed = datasets.interleave_datasets(
        parts, probabilities=cfg["probabilities"], seed=0, stopping_strategy="first_exhausted"
    )
    share = np.mean([row == "code" for row in mixed["d"]])
    assert share == pytest.approx(10 / 11, abs=0.02)


def test_megatron_blend_string(tmp_path, capsys):
    run = _run_dir(tmp_path)
    status, out, _ = _export(
        capsys, run, "--to", "megatron", "--which", "last", "--paths", "code=/d/code", "web=/d/web"
    )
    assert (status, out) == (0, "0.8 /d/code 0.2 /d/web\n")


def test_olmo_source_mixture(tmp_path, capsys):
    status, out, _ = _export(capsys, _run_dir(tmp_path), "--to", "olmo", "--paths", "code=/c")
    cfg = yaml.safe_load(out)
    sources = cfg["source_list"]["sources"]
    assert status == 0 and [s["source_name"] for s in sources] == ["code", "web"]
    assert sources[0] == {
        "source_name": "code",
        "target_ratio": 0.5,
        "paths": ["/c"],
        "max_repetition_ratio": 1.0,
    }
    assert sources[1]["paths"] == ["web"]  # no path known: the domain name as a placeholder
    assert np.isclose(sum(s["target_ratio"] for s in sources), 1.0)


def test_levanter_weights_and_data_folder_paths(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "code").mkdir(parents=True)
    (data / "web.jsonl").write_text('{"text": "x"}\n')
    status, out, err = _export(capsys, _run_dir(tmp_path, data_path=data), "--to", "levanter")
    cfg = yaml.safe_load(out)["data"]
    assert status == 0 and "warning" not in err
    assert cfg["train_weights"] == {"code": 0.5, "web": 0.5}
    assert cfg["configs"]["web"]["train_urls"] == [str((data / "web.jsonl").resolve())]


def test_levanter_schedule(tmp_path, capsys):
    run = _run_dir(tmp_path)
    argv = ["--to", "levanter", "--which", "schedule", "--train-steps", "1000", "--stages", "2"]
    status, out, _ = _export(capsys, run, *argv)
    stages = yaml.safe_load(out)["data"]["train_weights"]
    assert status == 0
    assert stages == [[0, {"code": 0.3, "web": 0.7}], [500, {"code": 0.7, "web": 0.3}]]


def test_stages_rounded_to_a_multiple():
    traj = np.array([[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.8, 0.2]])
    got = ex.stages(traj, ["a", "b"], steps=100, count=4, multiple=40)
    assert [s for s, _ in got] == [0, 40]  # 25 -> 0 merges with stage 0; 50 -> 40; 75 -> 40


def test_mosaic_streams(tmp_path, capsys):
    paths = ("code=s3://bucket/code", "web=/local/web")
    status, out, _ = _export(capsys, _run_dir(tmp_path), "--to", "mosaic", "--paths", *paths)
    streams = yaml.safe_load(out)["streams"]
    assert status == 0
    assert streams == {
        "code": {"remote": "s3://bucket/code", "proportion": 0.5},
        "web": {"local": "/local/web", "proportion": 0.5},
    }


def test_json_yaml_plain_and_schedule(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert json.loads(_export(capsys, run, "--to", "json")[1]) == {"code": 0.5, "web": 0.5}
    assert yaml.safe_load(_export(capsys, run, "--to", "yaml", "--which", "last")[1]) == {
        "code": 0.8,
        "web": 0.2,
    }
    out = _export(capsys, run, "--to", "json", "--which", "schedule", "--stages", "4")[1]
    assert [s["step"] for s in json.loads(out)] == [0, 10, 20, 30]


def test_paths_file_and_output(tmp_path, capsys):
    run = _run_dir(tmp_path)
    mapping = tmp_path / "paths.toml"
    mapping.write_text('code = "/c"\nweb = "/w"\n')
    target = tmp_path / "blend.txt"
    status, out, err = _export(
        capsys, run, "--to", "megatron", "--paths-file", mapping, "-o", target
    )
    assert (status, out) == (0, "") and "warning" not in err
    assert target.read_text() == "0.5 /c 0.5 /w\n"


def test_budget_epochs_and_warning(tmp_path, capsys):
    status, _, err = _export(capsys, _run_dir(tmp_path), "--to", "json", "--budget", "1M")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in err.splitlines()}
    assert float(rows["code"][-1]) == 500.0 and float(rows["web"][-1]) == 5.0
    assert "repeat more than 4 epochs: code (500.0), web (5.0)" in err


def test_budget_sets_olmo_repetition(tmp_path, capsys):
    out = _export(capsys, _run_dir(tmp_path), "--to", "olmo", "--budget", "2e5")[1]
    cfg = yaml.safe_load(out)
    assert cfg["requested_tokens"] == 200000
    assert [s["max_repetition_ratio"] for s in cfg["source_list"]["sources"]] == [100.0, 1.0]


def test_tokens_per_example_when_the_run_does_not_know(tmp_path, capsys):
    run = _run_dir(tmp_path, stats=None)
    status, _, err = _export(capsys, run, "--to", "hf")
    assert status == 2 and "--tokens-per-example" in err and len(err.splitlines()) == 1
    tpe = ("--tokens-per-example", "code=10", "web=100")
    status, out, _ = _export(capsys, run, "--to", "hf", *tpe)
    assert status == 0 and json.loads(out)["probabilities"] == pytest.approx([10 / 11, 1 / 11])


@pytest.mark.parametrize(
    "argv, status, words",
    [
        (["--to", "parquet"], 2, "choose one of hf"),
        (["--to", "megatron", "--which", "schedule"], 2, "staged weights: levanter"),
        (["--to", "olmo", "--which", "schedule"], 2, "olmo takes one fixed mixture"),
        (["--to", "megatron", "--paths", "books=/b"], 2, "unknown domain 'books'"),
        (["--to", "megatron", "--paths", "code"], 2, "expected DOMAIN=VALUE"),
        (["--to", "json", "--budget", "lots"], 2, "not a number"),
    ],
)
def test_bad_options_exit_2(tmp_path, capsys, argv, status, words):
    got, out, err = _export(capsys, _run_dir(tmp_path), *argv)
    lines = [x for x in err.splitlines() if x.startswith("tandem: ") and "warning" not in x]
    assert (got, out) == (status, "") and len(lines) == 1 and words in lines[0], err


def test_missing_or_broken_run_exit_1(tmp_path, capsys):
    status, _, err = _export(capsys, tmp_path / "nothing", "--to", "json")
    assert status == 1 and "no mixture.json" in err and len(err.splitlines()) == 1
    run = _run_dir(tmp_path)
    (run / "mixture.json").write_text("{ cut short")
    status, _, err = _export(capsys, run, "--to", "json")
    assert status == 1 and "not valid JSON" in err and len(err.splitlines()) == 1


def test_count_examples_of_streams():
    from tandem_adapters.data.shards import DocumentStream, Shard, eos_documents

    tokens = np.array([1, 2, 9, 3, 9, 4, 5, 6, 9], dtype=np.uint16)
    assert ex.count_examples(tokens, eos_id=9) == (3, False)
    assert ex.count_examples(tokens, eos_id=None) == (None, False)
    stream = DocumentStream([Shard("x", tokens, documents=eos_documents(tokens, 9))])
    assert ex.count_examples(stream) == (3, False)


def test_optimize_then_export(tmp_path, capsys):
    run = tmp_path / "run"
    items = small_job(
        "train.steps=20", f"run.backend={a_backend()}", f"run.run_dir={json.dumps(str(run))}"
    )
    assert main(["optimize", *set_args(*items), "-q"]) == 0
    capsys.readouterr()
    doc = json.loads((run / "mixture.json").read_text())
    assert set(doc["domain_stats"]) == set(doc["domains"])
    assert all(s["tokens"] > 0 for s in doc["domain_stats"].values())
    status, out, _ = _export(capsys, run, "--to", "megatron")
    weights = [float(w) for w in out.split()[::2]]
    assert status == 0 and out.split()[1::2] == doc["domains"]
    assert weights == pytest.approx([doc["average"][d] for d in doc["domains"]], abs=1e-6)
