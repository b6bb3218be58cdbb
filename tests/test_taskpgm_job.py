"""TaskPGM as a job (docs/methods.md): fine-tunes, probe pass, mixture files, CLI, both backends."""

import json
import math

import numpy as np
import pytest
from scipy.special import log_softmax
from utils import a_backend

import tandem_core as tc
from tandem_adapters import cli
from tandem_adapters.config import JobConfig
from tandem_adapters.data import DataError, from_arrays, markov
from tandem_adapters.run_dir import read_mixture
from tandem_adapters.taskpgm_job import _probe_step, _ProbeState, probe_batches, run_taskpgm

V, TRAIN, VAL = 16, 4000, 1000
TINY = {
    "data": {"seq_len": 16},
    "model": {"d_model": 32, "n_layer": 1, "n_head": 2},
    "train": {"batch_per_domain": 8, "lr": 1e-2, "log_every": 10},
    "taskpgm": {"finetune_steps": 40, "probe_max_per_task": 32, "lam": 4.0},
}


@pytest.fixture(scope="module")
def streams():
    """Tasks around one Markov chain: a (and its exact copy), b (a relative), c (unrelated)."""
    rng = np.random.default_rng(0)
    base = markov.random_chain(V, rng)
    chains = {
        "a": markov.perturb_chain(base, 0.5, rng),
        "b": markov.perturb_chain(base, 0.5, rng),
        "c": markov.random_chain(V, rng),
    }
    out = {k: markov.sample_chain(p, TRAIN + VAL, rng) for k, p in chains.items()}
    out["a_copy"] = out["a"]  # the same token stream: an exact duplicate task
    return out


def corpus(streams, names):
    train = {k: streams[k][:TRAIN] for k in names}
    return from_arrays(train, val={k: streams[k][TRAIN:] for k in names}, vocab_size=V)


def job(backend, run_dir, **taskpgm):
    tables = {k: dict(v) for k, v in TINY.items()}
    tables["run"] = {"backend": backend, "run_dir": str(run_dir), "progress": False}
    tables["taskpgm"].update(taskpgm)
    return JobConfig.from_mapping(tables)


SMOKE = {  # other settings per backend, so every option runs somewhere
    "torch": {"affinity": "pmi", "method": "pgd", "top_k": 4, "utility": "coverage"},
    "jax": {"affinity": "exp", "method": "mean_field", "utility": "mix", "sigma": 0.2},
}


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("backend", ["torch", pytest.param("jax", marks=pytest.mark.slow)])
def test_duplicate_tasks_share_weight(backend, streams, tmp_path):
    pytest.importorskip(backend)
    probe = {k: streams[k][TRAIN:] for k in ("a", "b", "c")}  # the same target for both runs
    lines = []
    out = run_taskpgm(
        job(backend, tmp_path / "dup"),
        tasks=corpus(streams, ["a", "a_copy", "b", "c"]),
        probe=probe,
        echo=lines.append,
    )
    alone = run_taskpgm(
        job(backend, tmp_path / "alone"), tasks=corpus(streams, ["a", "b", "c"]), probe=probe
    )
    assert len(lines) == 5 and "4 tasks" in lines[0]
    # identical fine-tunes: zero divergence (the JSD is exactly 0 for equal logits), and the
    # distinct tasks are clearly apart
    assert out.D[0, 1] < 1e-6 and out.S[0, 1] > 1 - 1e-5
    assert out.D[0, 2] > 0.02 and out.D[2, 3] > 0.02
    np.testing.assert_allclose(out.D, out.D.T)
    assert math.isclose(out.p.sum(), 1.0, abs_tol=1e-9) and (out.p >= 0).all()
    p_a, p_copy, p_alone = out.p[0], out.p[1], alone.p[0]
    assert p_alone > 0.15  # task a matters on its own, so the comparison means something
    assert abs(p_a - p_copy) < 1e-3  # symmetric: each copy gets half
    assert abs((p_a + p_copy) - p_alone) < 0.25 * p_alone  # together: about one copy's weight
    assert p_a < 0.75 * p_alone  # not both taking a's full weight
    # the mechanism, without the utility's re-standardisation: the energy sees p_a + p_copy only
    keep = [0, 2, 3]
    mu = tc.default_mu(out.S, 4.0)
    merged = tc.solve_mixture(out.u[keep], out.S[np.ix_(keep, keep)], lam=4.0, mu=mu)
    np.testing.assert_allclose(p_a + p_copy, merged[0], atol=0.01)
    # the unique tasks keep the same fine-tunes and the same probe losses in both runs
    np.testing.assert_allclose(out.task_loss[[0, 2, 3]], alone.task_loss, rtol=1e-5)
    np.testing.assert_allclose(out.D[np.ix_([0, 2, 3], [0, 2, 3])], alone.D, atol=1e-6)

    rd = tmp_path / "dup"
    weights = read_mixture(rd)
    assert list(weights) == ["a", "a_copy", "b", "c"]
    np.testing.assert_allclose(list(weights.values()), out.p, atol=1e-9)
    doc = json.loads((rd / "mixture.json").read_text())
    assert doc["method"] == "taskpgm" and doc["backend"] == backend
    assert doc["average"] == doc["last"] and np.shape(doc["trajectory"]) == (1, 4)
    details = json.loads((rd / "taskpgm.json").read_text())
    assert details["tasks"] == ["a", "a_copy", "b", "c"] and details["subset"] is None
    np.testing.assert_allclose(details["S"], out.S)
    assert details["settings"]["lam"] == 4.0 and details["settings"]["mu_used"] > 4.0
    assert details["probe"]["groups"] == ["a", "b", "c"] and details["probe"]["tokens"] > 0
    assert (rd / "affinity.png").stat().st_size > 1000
    assert "[taskpgm]" in (rd / "config.toml").read_text()
    rows = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"a", "a_copy", "b", "c"}


def test_group_gain_ignores_a_noise_task(streams, tmp_path):
    """A multi-task probe: the whole-probe gain rewards the noise model, group_gain does not."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    tasks = {k: streams[k][:TRAIN] for k in ("a", "b", "c")}
    tasks["noise"] = rng.integers(0, V, size=TRAIN).astype(np.uint16)
    probe = {k: streams[k][TRAIN:] for k in ("a", "b", "c")}
    cfg = job("torch", tmp_path, lam=1.0)  # the default utility, group_gain
    out = run_taskpgm(cfg, tasks=from_arrays(tasks, vocab_size=V), probe=probe, echo=len)
    assert out.group_loss.shape == (4, 3) and out.base_loss.shape == (3,)
    gain = np.maximum(out.base_loss[None, :] - out.group_loss, 0).mean(1)
    np.testing.assert_allclose(out.u, (gain - gain.mean()) / gain.std(), atol=1e-9)
    assert out.p[3] < 1e-9 and out.p[0] > 0.1 and out.p[2] > 0.1  # (b is a relative of a)
    # a specialist is confidently wrong on the chains it did not learn: on the whole probe set
    # the model that learned nothing (noise) beats c's, the only one that knows c's third, and
    # the "gain" utility drops c
    whole = tc.taskpgm_mixture(D=out.D, utility="gain", val_loss=out.task_loss, lam=1.0)
    assert out.task_loss[3] < out.task_loss[2] and whole.u[3] > whole.u[2]
    assert whole.p[2] < 0.05 < out.p[2]
    details = json.loads((tmp_path / "taskpgm.json").read_text())
    assert details["settings"]["utility"] == "group_gain"  # the default


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_both_backends_from_python(backend, streams, tmp_path):
    pytest.importorskip(backend)
    cfg = job(backend, tmp_path, finetune_steps=10, probe_max_per_task=16, **SMOKE[backend])
    out = run_taskpgm(cfg, tasks=corpus(streams, ["a", "a_copy", "c"]), echo=lambda line: None)
    assert out.probe_groups == ("a", "a_copy", "c")  # default probe: the tasks' validation
    assert out.D[0, 1] < 1e-6 and out.D[0, 2] > 0.01
    assert abs(out.p[0] - out.p[1]) < 1e-6 and math.isclose(out.p.sum(), 1.0, abs_tol=1e-9)
    assert np.isfinite(out.task_loss).all() and (out.task_loss != out.base_loss.mean()).all()
    assert read_mixture(tmp_path).keys() == {"a", "a_copy", "c"}
    details = json.loads((tmp_path / "taskpgm.json").read_text())
    assert {k: details["settings"][k] for k in SMOKE[backend]} == SMOKE[backend]


def test_cli_taskpgm_then_train(streams, tmp_path, capsys):
    pytest.importorskip("torch")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("a", "a_copy", "b", "c"):
        np.save(tasks / f"{name}.npy", streams[name].astype(np.uint16))
    run_dir = tmp_path / "run"
    model = [f"{t}.{k}={json.dumps(v)}" for t in ("data", "model") for k, v in TINY[t].items()]
    model += ["run.progress=false", "train.batch_per_domain=8"]
    sets = [*model, f"run.run_dir={json.dumps(str(run_dir))}", "taskpgm.lam=4"]
    sets += ["taskpgm.finetune_steps=20", "taskpgm.budget=2", "taskpgm.top_k=4"]
    argv = ["taskpgm", "--tasks", str(tasks), *[x for s in sets for x in ("--set", s)]]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "holding out 10%" in printed and "greedy subset (budget 2)" in printed
    assert "mixture.json" in printed and "a_copy" in printed
    details = json.loads((run_dir / "taskpgm.json").read_text())
    assert 1 <= len(details["subset"]) <= 2
    assert not {"a", "a_copy"} <= set(details["subset"])  # never both duplicates
    weights = read_mixture(run_dir)
    assert sum(w > 0 for w in weights.values()) == len(details["subset"])
    assert (run_dir / "affinity.png").exists()
    assert cli.main(argv) == 1  # the run directory is taken: no silent overwrite
    assert "already holds a run" in capsys.readouterr().err

    train_dir = tmp_path / "train"
    sets = [*model, f"run.run_dir={json.dumps(str(train_dir))}", "train.steps=3"]
    sets += [f"data.path={json.dumps(str(tasks))}", "data.val_fraction=0.1"]
    train = ["train", "--mixture", str(run_dir), *[x for s in sets for x in ("--set", s)]]
    assert cli.main(train) == 0
    fixed = read_mixture(train_dir)
    assert fixed.keys() == weights.keys()
    np.testing.assert_allclose(list(fixed.values()), list(weights.values()), atol=1e-6)


@pytest.mark.parametrize("kind", ["file", "folder", "corpus"])
def test_probe_sources(kind, streams, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "probe").mkdir()
    np.save(tmp_path / "probe" / "b.npy", streams["b"][TRAIN:].astype(np.uint16))
    np.save(tmp_path / "probe" / "c.npy", streams["c"][TRAIN:].astype(np.uint16))
    probe = {
        "file": tmp_path / "probe" / "b.npy",
        "folder": tmp_path / "probe",
        "corpus": from_arrays({"x": streams["a"]}, target=streams["b"][TRAIN:], vocab_size=V),
    }[kind]
    tasks = from_arrays({k: streams[k][:TRAIN] for k in ("a", "b")}, vocab_size=V)  # no val
    cfg = job(
        "torch", tmp_path / "run", finetune_steps=3, probe=str(probe) if kind != "corpus" else ""
    )
    out = run_taskpgm(cfg, tasks=tasks, probe=probe if kind == "corpus" else None, echo=len)
    groups = {"file": ("b",), "folder": ("b", "c"), "corpus": ("target",)}[kind]
    assert out.probe_groups == groups and out.probe_tokens > 0
    bad = {"x": np.array([0, V + 3])}  # a token outside the tasks' vocabulary
    with pytest.raises(DataError, match="outside"):
        run_taskpgm(job("torch", tmp_path / "bad"), tasks=tasks, probe=bad)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("method", "newton", "taskpgm.method"),
        ("utility", "vibes", "taskpgm.utility"),
        ("affinity", "cosine", "taskpgm.affinity"),
        ("lam", -1.0, "taskpgm.lam"),
        ("mix", 1.5, "taskpgm.mix"),
        ("finetune_steps", 0, "taskpgm.finetune_steps"),
        ("top_k", -2, "taskpgm.top_k"),
        ("top_k", "all", "taskpgm.top_k must be int"),
        ("sigma", 0.5, "taskpgm.sigma applies only"),
        ("bogus", 1, "taskpgm.bogus"),
    ],
)
def test_bad_config_names_the_key(key, value, message):
    with pytest.raises(tc.ConfigError, match=message):
        JobConfig.from_mapping({"taskpgm": {key: value}})


def test_cli_bad_config_exits_2(tmp_path, capsys):
    code = cli.main(["taskpgm", "--tasks", str(tmp_path), "--set", "taskpgm.method=newton"])
    assert code == 2
    assert "taskpgm.method" in capsys.readouterr().err


def test_config_round_trip():
    tables = {
        "taskpgm": {"lam": 1, "budget": 3, "affinity": "exp"},
        "run": {"backend": a_backend()},
    }
    cfg = JobConfig.from_mapping(tables)
    assert cfg.taskpgm.lam == 1.0 and isinstance(cfg.taskpgm.lam, float)
    assert JobConfig.from_mapping(cfg.to_mapping()) == cfg


def test_no_probe_data_is_a_data_error(streams, tmp_path):
    no_val = from_arrays({"a": streams["a"], "b": streams["b"]}, vocab_size=V)
    with pytest.raises(DataError, match="probe set"):
        run_taskpgm(job(a_backend(), tmp_path), tasks=no_val)
    target = from_arrays({"a": streams["a"]}, target=streams["b"], vocab_size=V)
    with pytest.raises(DataError, match="pmi"):
        run_taskpgm(job(a_backend(), tmp_path, affinity="pmi"), tasks=target)
    assert not (tmp_path / "mixture.json").exists()  # checked before any work


# ----------------------------------------------------------------------------- probe pass


def test_probe_batches_have_one_shape():
    streams = (np.arange(100) % V, np.arange(40) % V)
    batches = probe_batches(streams, seq_len=8, max_per_stream=10, batch_size=4)
    # stream 0: 10 windows (capped) -> 3 batches; stream 1: ceil(39 / 8) = 5 windows -> 2
    assert [int(b["domain"][0]) for b in batches] == [0, 0, 0, 1, 1]
    assert all(b["tokens"].shape == b["labels"].shape == (4, 8) for b in batches)
    scored = sum(int((b["labels"] != tc.IGNORE_INDEX).sum()) for b in batches)
    assert scored == 10 * 8 + 39  # padding rows and the stream's tail are ignored


def test_probe_step_matches_reference(rng):
    n_models, groups, (b, t) = 4, 3, (3, 5)
    logits = tuple(rng.normal(size=(b, t, V)) * 3 for _ in range(n_models))
    labels = rng.integers(0, V, size=(b, t)).astype(np.int32)
    labels[0, :2] = tc.IGNORE_INDEX
    onehot = np.eye(groups)[1]
    state = _ProbeState(tc.jsd_init(n_models - 1), np.zeros((n_models, groups)), np.zeros(groups))
    state = _probe_step(state, (logits, np.arange(V), labels, onehot), top_k=None)
    mask = labels != tc.IGNORE_INDEX
    for i, x in enumerate(logits):
        nll = -np.take_along_axis(log_softmax(x, -1), labels[..., None].clip(0), -1)[..., 0]
        np.testing.assert_allclose(state.loss[i], [0.0, nll[mask].sum(), 0.0], rtol=1e-12)
    np.testing.assert_allclose(state.tokens, [0.0, mask.sum(), 0.0])
    D = tc.jsd_result(state.jsd)
    np.testing.assert_allclose(
        D[0, 2], tc.jensen_shannon(logits[1], logits[3])[mask].mean(), rtol=1e-12
    )
