"""Smoke tests of benchmarks/adapt_quality.py and benchmarks/taskpgm_quality.py at minimal sizes.

The jobs run in this process (no pool); the real numbers come from `nox -s bench`. torch only.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import adapt_quality  # noqa: E402
import taskpgm_quality  # noqa: E402

TINY = ["--seeds", "0", "--steps", "3", "--d-model", "16", "--n-layer", "1", "--seq-len", "8"]
TINY += ["--batch-per-domain", "2", "--eval-windows", "4"]


def test_adapt_arms_and_tables():
    args = adapt_quality.parse([*TINY, "--regimes", "scarce", "--tokens", "1024"])
    spec = adapt_quality.specs_from(args)[0]
    assert spec["keep"] == adapt_quality.KEEP["scarce"] and spec["warm"] == 3
    results = {(0, name): adapt_quality.arm(spec, name) for name in adapt_quality.ARMS}
    assert all(np.isfinite(r["target"]) and r["cpu"] > 0 for r in results.values())
    for name in ("offline-adapt", "offline-bm25"):
        kept = results[(0, name)]["kept"]
        assert list(kept) == ["target", "conflict", "offtopic", "noise"]
        assert abs(sum(kept.values()) - 1) < 1e-9
    for name in ("adapt", "adapt-bm25", "adapt-center"):
        assert all(0 <= w <= 1 for w in results[(0, name)]["weights"].values())
    adapt = results[(0, "adapt")]
    assert 0 <= adapt["auc"] <= 1 and len(adapt["mean_score"]) == 4
    report = adapt_quality.Report()
    adapt_quality.summarize(report, "scarce", results, [0], adapt_quality.known_of([0], 0.3))
    text = report.text()
    assert "offline-adapt (kept share)" in text and "AUC in-distribution vs off-target" in text
    assert [g[0] for g in report.goals] == [
        "adapt beats uniform on >= 3 seeds (scarce pool)",
        "adapt beats offline-adapt (scarce pool)",
    ]


def test_adapt_windows_and_kept_stream():
    from tandem_adapters.data import TokenSampler
    from tandem_adapters.data.curation import make_pool_suite

    corpus = make_pool_suite(seed=0, tokens_per_source=100).corpus
    rows, labels = adapt_quality.windows(corpus, 8)
    assert rows.shape == (4 * 11, 9) and np.bincount(labels).tolist() == [11] * 4
    assert np.array_equal(rows[12], np.asarray(corpus.train[1])[9:18])
    kept = adapt_quality.KeptWindows(rows[[3, 20]])
    single = type(corpus)(("kept",), (kept,), (), (), 48)
    batch = TokenSampler(single, 8, seed=0).train_batch(6)
    for tokens, labels_ in zip(batch["tokens"], batch["labels"]):  # whole kept windows only
        window = np.concatenate([tokens, labels_[-1:]])
        assert any(np.array_equal(window, rows[i]) for i in (3, 20))


def test_taskpgm_learn_fresh_and_tables():
    args = taskpgm_quality.parse(TINY)
    spec = taskpgm_quality.specs_from(args)[0]
    assert list(spec["variants"]) == ["taskpgm-gain"]
    spec["taskpgm"] = {"finetune_steps": 2, "probe_max_per_task": 4}
    learned = taskpgm_quality.learn(spec)
    for p in (learned["p"], learned["variants"]["taskpgm-gain"]):
        assert p.shape == (6,) and abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
    known = taskpgm_quality.suite(spec).known_answer
    mixtures = {
        "uniform": taskpgm_quality._key(np.ones(6)),
        "size": taskpgm_quality._key(list(known["sizes"].values())),
        "taskpgm": taskpgm_quality._key(learned["p"]),
        "taskpgm-gain": taskpgm_quality._key(learned["variants"]["taskpgm-gain"]),
    }
    fresh = {a: taskpgm_quality.fresh(spec, a) for a in set(mixtures.values())}
    out = next(iter(fresh.values()))
    assert set(out["groups"]) == {"target_a", "target_b", "target_c"}
    assert np.isclose(out["target"], np.mean(list(out["groups"].values())))
    entry = {"spec": spec, "known": known, "mixtures": mixtures, "fresh": fresh, "learned": learned}
    report = taskpgm_quality.Report()
    stats = taskpgm_quality.summarize(report, [entry], ["taskpgm-gain"])
    taskpgm_quality.goals(report, stats, ["taskpgm-gain"])
    assert "ideal (known answer)" in report.text() and "near-duplicates" in report.text()
    assert [g[0] for g in report.goals] == [
        "taskpgm beats uniform on >= 3 seeds",
        "taskpgm beats size on >= 3 seeds",
    ]


def test_variants_parse():
    got = taskpgm_quality.parse_variants(["lam4:lam=4,utility=mix", "plain:"])
    assert got == {"lam4": {"lam": 4.0, "utility": "mix"}, "plain": {}}
    with pytest.raises(SystemExit, match="lam needs a number"):
        taskpgm_quality.parse_variants(["x:lam=big"])
