"""JAX sharded checkpoints (``backend.checkpoint = "sharded"``): orbax shards, one process.

The two-process cases (2 -> 2 bitwise, 2 -> 1, a save killed on both processes) are in
``test_multinode.py`` (``dist``, ``slow``).
"""

import json
import os

import numpy as np
import pytest
from test_distributed import SMALL, _cfg

pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")

SHARDED = {"checkpoint": "sharded"}


class Killed(Exception):
    """The process 'dies' between its shard write and the COMPLETE marker."""


def _jax_run(cfg, options=None, devices=None):
    from backend_kits import JaxKit
    from toy_data import toy_sampler

    from tandem_core.run import MixtureRun
    from tandem_core.run.gpt import init_gpt_params

    kit = JaxKit()
    model = kit.model(SMALL, init_gpt_params(SMALL, 0), "float64")
    engine = kit.engine(model, cfg, 3, 1, options=options, devices=devices)
    return MixtureRun(engine, toy_sampler(seq_len=16), cfg), engine


def _params(engine) -> np.ndarray:
    """Both twins' parameters and optimizer states, flattened: float64."""
    import jax

    t = engine.twins
    leaves = jax.tree.leaves((t.proxy, t.reference, t.opt_proxy, t.opt_reference, t.counters))
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in leaves])


def _resume(root, options=SHARDED, devices=None):
    run, engine = _jax_run(_cfg(), options, devices)
    state, meta = engine.load_sharded(root)
    run.load_state_dict(state)
    result = run.run(progress=False)
    return result.trajectory, _params(engine), meta


@pytest.fixture(scope="module")
def whole():
    run, engine = _jax_run(_cfg(), SHARDED)
    return run.run(progress=False).trajectory, _params(engine)


def test_sharded_resume_is_bitwise_and_a_killed_save_is_ignored(tmp_path, whole, monkeypatch):
    from tandem_core.run import sharded
    from tandem_jax import checkpoint

    trajectory, params = whole
    run, engine = _jax_run(_cfg(), SHARDED)
    assert set(engine.state_dict()) == {"counters"}  # the twins go to the shards
    while run.proxy_step < 7:
        run.step()
    first = engine.save_sharded(tmp_path, run.state_dict(), step=7, metadata={"step": 7})
    marker = json.loads((first / sharded.COMPLETE).read_text())
    assert any(name.startswith("ocdbt.process_0/") for name in marker["files"])  # orbax's
    while run.proxy_step < 11:
        run.step()

    def die(tmp):
        raise Killed(str(tmp))

    monkeypatch.setattr(checkpoint, "_before_commit", die)
    with pytest.raises(Killed):
        engine.save_sharded(tmp_path, run.state_dict(), step=11)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["step-11.tmp", "step-7"]  # shards, no marker
    resumed, resumed_params, meta = _resume(tmp_path)
    assert meta["step"] == 7 and sorted(os.listdir(tmp_path)) == ["step-7"]
    np.testing.assert_array_equal(resumed, trajectory)  # every alpha, bitwise
    np.testing.assert_array_equal(resumed_params, params)  # both twins, both optimizers


def test_tampered_or_foreign_checkpoints_are_refused(tmp_path):
    from tandem_core.run import sharded

    run, engine = _jax_run(_cfg(), SHARDED)
    run.step()
    path = engine.save_sharded(tmp_path / "a", run.state_dict(), step=1)
    again = engine.save_sharded(tmp_path / "a", run.state_dict(), step=1)  # replaced in place
    assert path == again and os.listdir(tmp_path / "a") == ["step-1"]
    shard = next(p for p in (path / "shards").rglob("*") if p.is_file() and "ocdbt" in str(p))
    with open(shard, "ab") as f:  # a shard file changed after the marker
        f.write(b"x")
    assert sharded.latest(tmp_path / "a") is None
    with pytest.raises(FileNotFoundError):
        engine.load_sharded(tmp_path / "a")
    # another model's checkpoint: a clear error, not a silent partial restore
    run, engine = _jax_run(_cfg(), SHARDED)
    engine.save_sharded(tmp_path / "b", run.state_dict(), step=0)
    from backend_kits import JaxKit

    from tandem_core.run.gpt import GPTConfig, init_gpt_params

    other = GPTConfig(vocab_size=16, seq_len=16, d_model=32, n_layer=2, n_head=2)
    kit = JaxKit()
    engine = kit.engine(kit.model(other, init_gpt_params(other, 0), "float64"), _cfg(), 3, 1)
    with pytest.raises(ValueError, match="leaves"):
        engine.load_sharded(tmp_path / "b")


def test_options_and_npz_default():
    from tandem_core import ConfigError
    from tandem_jax import JaxOptions

    assert JaxOptions().checkpoint == "npz"
    with pytest.raises(ConfigError, match="backend.checkpoint"):
        JaxOptions(checkpoint="zarr")
    _, engine = _jax_run(_cfg())
    assert {"proxy", "reference", "opt_u", "opt_w", "counters"} <= set(engine.state_dict())


@pytest.mark.slow
def test_job_with_sharded_checkpoints_resumes_bitwise(tmp_path, monkeypatch):
    """``optimize`` on JAX with ``backend.checkpoint="sharded"``: crash at 30, resume."""
    from utils import small_job

    from tandem_adapters.config import JobConfig
    from tandem_adapters.jobs import optimize
    from tandem_adapters.run_dir import RunDir

    def config(run):
        sets = [*small_job(), "run.backend=jax", f'run.run_dir="{run}"', "train.steps=40"]
        sets += ['backend.checkpoint="sharded"', "run.progress=false", "run.checkpoint_every=20"]
        return JobConfig.load(overrides=sets)

    whole = optimize(config(tmp_path / "whole"), echo=lambda *a: None)
    append = RunDir.append_metrics

    def crash_at_30(self, row):  # written, then the process "dies"
        append(self, row)
        if row.get("step") == 30:
            raise RuntimeError("killed")

    monkeypatch.setattr(RunDir, "append_metrics", crash_at_30)
    with pytest.raises(RuntimeError, match="killed"):
        optimize(config(tmp_path / "run"), echo=lambda *a: None)
    monkeypatch.setattr(RunDir, "append_metrics", append)
    assert os.listdir(tmp_path / "run" / "checkpoint.sharded") == ["step-20"]
    resumed = optimize(config(tmp_path / "run"), resume=True, echo=lambda *a: None)
    np.testing.assert_array_equal(resumed.trajectory, whole.trajectory)
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
