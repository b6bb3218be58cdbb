"""Smoke tests of `tandem bench` and of the benchmark scripts' functions, at minimal sizes.

They keep benchmarks/speed.py and benchmarks/quality.py from rotting; the real numbers come from
`nox -s bench`. torch only (JAX would spend its time compiling); about 20 s in all.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import quality  # noqa: E402
import speed  # noqa: E402

TINY = [
    "model.d_model=16",
    "model.n_layer=1",
    "model.n_head=2",
    "data.seq_len=8",
    "data.suite_tokens_per_domain=2048",
    "train.batch_per_domain=2",
    "train.val_batch_size=4",
    "train.eval_per_domain=2",
    "train.probe_steps=2",
    "train.free_steps=2",
]


def tiny_job():
    from tandem_adapters.config import JobConfig

    return JobConfig.load(None, TINY)


def test_tandem_bench_prints_the_backend_table(capsys, tmp_path):
    from tandem_adapters.cli import main

    args = ["bench", "--engines", "torch,torch-fused", "--episodes", "1", "--rounds", "1"]
    args += ["--threads", "0", "--no-memory", "--json", str(tmp_path / "rows.json")]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "speed / fastest" in out and "torch-fused" in out and "cpu:" in out
    rows = __import__("json").loads((tmp_path / "rows.json").read_text())
    assert [r["engine"] for r in rows] == ["torch", "torch-fused"]
    assert max(r["ratio_to_fastest"] for r in rows) == 1.0
    assert all(r["steps_per_s"] > 0 and r["compile_s"] >= 0 for r in rows)
    assert max(r["alpha_diff"] for r in rows) < 1e-4  # fused twins: the same trajectory


def test_peak_memory_is_measured_in_a_fresh_process():
    from tandem_adapters.bench import peak_memory

    out = peak_memory(tiny_job(), "torch", timeout=120)
    assert out["rss_mib"] > 0 and out["device_mib"] is None


def test_tandem_bench_rejects_an_unknown_engine(capsys):
    from tandem_adapters.cli import main

    assert main(["bench", "--engines", "tpu", "--no-memory", "--threads", "0"]) == 2
    assert "unknown engine 'tpu'" in capsys.readouterr().err


def test_speed_sections_on_torch():
    from tandem_adapters.bench import build

    cfg = tiny_job()
    run = build(cfg, "torch")
    for _ in range(run.schedule.length):
        run.step()
    comps = speed.component_times(run, speed.batches(run, 2), repeat=1)
    assert set(comps) == {"probe", "free", "val_step", "eval_forward", "episode"}
    assert all(v > 0 for v in comps.values())
    fused = build(cfg, "torch-fused", run.sampler.corpus)
    times = speed.fusion_times(run, fused, speed.batches(run, 1), repeat=1)
    assert set(times) == {"single", "sequential", "fused"}
    report = speed.Report()
    speed.host_syncs(report, {"torch": run})
    assert "[met] 0 host syncs per step in the loop (torch): 0" in report.text()
    reads = next(ln for ln in report.lines if ln.startswith("torch "))
    assert int(reads.split()[4]) > 0  # a logging step reads on purpose: the counter is live


def test_determinism_probe_times_episodes_of_a_job():
    import json

    cfg = tiny_job().replace(run={"backend": "torch"}, backend={"deterministic": False})
    assert speed.episode_probe(json.dumps(cfg.to_mapping())) > 0


def test_machinery_and_scaling_in_domains():
    import tandem_core as tc

    transform = tc.tandem(eta_alpha=0.3, step="eg", normalize="rms")
    for backend in ("numpy", "torch"):
        call = speed.machinery_fn(backend, 7, 32, transform)
        call(), call()
    report = speed.Report()
    speed.scale_domains(report, [10, 100], 64, ["numpy", "torch"])
    assert "M = 100 (torch)" in report.text()


def test_quality_jobs_and_tables(tmp_path):
    args = quality.parse(["--seeds", "0", "--steps", "4", "--d-model", "16", "--n-layer", "1"])
    args.batch_per_domain, args.eval_windows, args.curve_points = 2, 4, 2
    spec = {**quality.specs_from(args)[0], "seq_len": 8}
    spec["tandem"] = {"probe_steps": 1, "free_steps": 1}
    assert spec["suite"] == "planted" and spec["grid"] == 2
    assert len(quality.grid(5, 2)) == 15 and len(quality.grid(4, 3)) == 20
    assert len(quality.grid(5, 2, without=1)) == 10  # the noise domain left out
    assert all(a[1] == 0 for a in quality.grid(5, 2, without=1))
    learned = quality.learn(spec, "tandem", "torch")
    assert learned["trajectory"].shape == (2, 5)
    assert abs(learned["average"].sum() - 1) < 1e-5
    out = quality.fresh(spec, quality._key(learned["average"]))
    assert np.isfinite(out["target"]) and len(out["domains"]) == 5 and len(out["curve"]) == 2
    x = quality.update_steps(spec, "tandem", 2)
    assert x.tolist() == [0, 1, 3]
    entry = quality.new_entry(spec)
    assert entry["static"]["uniform"] == entry["static"]["natural"]  # equal domain sizes
    assert entry["known"]["noise"] == "noise" and len(entry["grid"]) == 15
    # the grid's points and the even mixtures of every subset of the 4 other domains
    assert len(quality.oracle_grid(4, 3, without=1)) == 13
    assert (
        quality._key([1, 0, 1, 1, 1]) in entry["grid"]
        and quality._key([1, 1, 1, 1, 0]) not in entry["grid"]
    )


def fake_entry(seed):
    """Results of one seed, made up: the grid's best is target_like alone."""
    rng = np.random.default_rng(seed)
    domains = ("easy", "noise", "related", "restricted", "target_like")
    grid = [quality._key(a) for a in quality.grid(5, 2, without=1)]
    uniform = quality._key(np.ones(5))
    learned = quality._key([0.02, 0.02, 0.2, 0.16, 0.6])

    def result(alpha):
        loss = 2.0 - alpha[4] + rng.normal(0, 0.01)
        return {"target": loss, "domains": dict.fromkeys(domains, loss), "curve": [(2, loss)]}

    fresh = {(b, a): result(a) for a in [*grid, uniform, learned] for b in quality.BACKENDS}
    traj = np.tile(np.asarray(learned), (3, 1))
    spec = {"steps": 75, "tandem": {}}
    return {
        "spec": spec,
        "domains": domains,
        "known": {"noise": "noise", "up": ["target_like"]},
        "static": dict.fromkeys(quality.STATIC, uniform),
        "grid": grid,
        "fresh": fresh,
        "learned": {
            m: {"average": np.array(learned), "last": np.array(learned), "trajectory": traj}
            for m in quality.LEARNED
        },
    }


def test_quality_summary_goals_and_plots(tmp_path):
    entries = [fake_entry(s) for s in range(3)]
    report = quality.Report()
    stats = quality.summarize(report, entries)
    quality.goals(report, "restricted", stats, 1)
    text = report.text()
    assert "[met] tandem (torch) beats uniform (torch) on every seed" in text
    assert "[met] tandem (jax) noise weight < 0.05: 0.020" in text
    assert "[NOT met] tandem (torch) regret <= 5% of uniform's" in text
    # learned 0.6 on the only target-relevant domain, the oracle 1.0
    assert "[NOT met] tandem (jax) target-relevant weight within 0.1 of the oracle's" in text
    paths = quality.plot("planted", entries, tmp_path)
    assert all(Path(p).stat().st_size > 1000 for p in paths)
