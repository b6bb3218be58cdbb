"""Sharded checkpoints (``backend.checkpoint = "sharded"``): 2 gloo ranks with FSDP, DCP shards."""

import dataclasses
import json
import os
import sys

import numpy as np
import pytest
from test_distributed import SMALL, _cfg, _free_port, _torch_run

pytestmark = [pytest.mark.dist, pytest.mark.slow]
SHARDED = {"fsdp": True, "checkpoint": "sharded"}


class Killed(Exception):
    """A rank 'dies' between its shard write and the COMPLETE marker."""


def _full_params(engine) -> np.ndarray:
    """Both twins' whole parameters, flattened: ``(2 * P,)`` float64."""
    import torch

    from tandem_torch.distributed import full

    engine.twins.reshard()
    mods = (engine.twins.proxy, engine.twins.reference)
    flat = [full(p.detach()).reshape(-1) for m in mods for p in m.parameters()]
    return torch.cat(flat).numpy()


def _resume(root, options):
    """A fresh run resumed from the newest complete checkpoint under ``root``, run to the end."""
    run, engine = _torch_run(_cfg(), options=options)
    state, meta = engine.load_sharded(root)
    run.load_state_dict(state)
    result = run.run(progress=False)
    return result.trajectory, _full_params(engine), meta


def _rank_main(rank, world, port, out, root):
    import torch
    import torch.distributed as dist

    from tandem_torch import sharded

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        whole, engine = _torch_run(_cfg(), options=SHARDED)
        trajectory = whole.run(progress=False).trajectory
        params = _full_params(engine)
        engine.save_sharded(f"{root}/final", whole.state_dict(), step=whole.proxy_step)
        # a run stopped after a checkpoint at step 7, resumed by a fresh run
        run, engine = _torch_run(_cfg(), options=SHARDED)
        while run.proxy_step < 7:
            run.step()
        engine.save_sharded(f"{root}/ckpt", run.state_dict(), step=7, metadata={"step": 7})
        resumed, resumed_params, meta = _resume(f"{root}/ckpt", SHARDED)
        # the same run goes on to step 11 and 'dies' during the save, after its shard write
        while run.proxy_step < 11:
            run.step()

        def die(tmp):
            raise Killed(str(tmp))

        sharded._before_commit, keep = die, sharded._before_commit
        try:
            engine.save_sharded(f"{root}/ckpt", run.state_dict(), step=11)
        except Killed:
            pass
        finally:
            sharded._before_commit = keep
        dist.barrier()
        left = sorted(os.listdir(f"{root}/ckpt"))
        dist.barrier()  # every rank has looked before the resume removes the incomplete one
        after_kill, after_kill_params, _ = _resume(f"{root}/ckpt", SHARDED)
        if rank == 0:
            np.savez(
                out,
                trajectory=trajectory,
                params=params,
                resumed=resumed,
                resumed_params=resumed_params,
                after_kill=after_kill,
                after_kill_params=after_kill_params,
                left=np.array(left),
                left_after=np.array(sorted(os.listdir(f"{root}/ckpt"))),
                meta_step=meta["step"],
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)  # skip gloo teardown at exit (see test_distributed._rank_main)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank FSDP session: whole run, checkpoint at 7, killed save at 11, resumes."""
    torch_mp = pytest.importorskip("torch.multiprocessing")
    root = tmp_path_factory.mktemp("sharded")
    out = root / "rank0.npz"
    torch_mp.spawn(_rank_main, args=(2, _free_port(), str(out), str(root)), nprocs=2, join=True)
    return root, dict(np.load(out))


def test_fsdp_sharded_resume_is_bitwise(two_ranks):
    _, got = two_ranks
    np.testing.assert_array_equal(got["resumed"], got["trajectory"])  # every alpha, bitwise
    np.testing.assert_array_equal(got["resumed_params"], got["params"])  # proxy and reference
    assert int(got["meta_step"]) == 7


def test_kill_during_sharded_save_keeps_the_previous_checkpoint(two_ranks):
    root, got = two_ranks
    assert list(got["left"]) == ["step-11.tmp", "step-7"]  # shards written, no marker
    assert list(got["left_after"]) == ["step-7"]  # the resume removed the incomplete folder
    np.testing.assert_array_equal(got["after_kill"], got["trajectory"])
    np.testing.assert_array_equal(got["after_kill_params"], got["params"])
    shards = os.listdir(root / "ckpt" / "step-7" / "shards")
    assert sum(name.endswith(".distcp") for name in shards) == 2  # one file per rank


def test_two_rank_checkpoint_loads_into_one_process(two_ranks):
    root, got = two_ranks
    run, engine = _torch_run(_cfg(), options={"checkpoint": "sharded"})  # no FSDP, 1 process
    state, _ = engine.load_sharded(root / "final")
    run.load_state_dict(state)
    np.testing.assert_array_equal(_full_params(engine), got["params"])
    np.testing.assert_array_equal(run.state.alpha.numpy(), got["trajectory"][-1])


# ---------------------------------------------------------------------- DDP; 1 -> 2 ranks
def _ddp_main(rank, world, port, out, root):
    """DDP twins with sharded checkpoints (bitwise resume); a 1-process checkpoint into FSDP."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ddp = {"checkpoint": "sharded"}
        whole, engine = _torch_run(_cfg(), options=ddp)
        trajectory = whole.run(progress=False).trajectory
        params = _full_params(engine)
        run, engine = _torch_run(_cfg(), options=ddp)
        while run.proxy_step < 7:
            run.step()
        engine.save_sharded(f"{root}/ddp", run.state_dict(), step=7)
        resumed, resumed_params, _ = _resume(f"{root}/ddp", ddp)
        # the single process's checkpoint at step 7, resharded onto 2 FSDP ranks
        grown, grown_params, _ = _resume(f"{root}/one", SHARDED)
        if rank == 0:
            shards = os.listdir(f"{root}/ddp/step-7/shards")
            np.savez(
                out,
                trajectory=trajectory,
                params=params,
                resumed=resumed,
                resumed_params=resumed_params,
                grown=grown,
                grown_params=grown_params,
                distcp=sum(name.endswith(".distcp") for name in shards),
            )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)


def test_ddp_sharded_resume_is_bitwise_and_one_process_reshards_onto_two(tmp_path):
    torch_mp = pytest.importorskip("torch.multiprocessing")
    one = {"checkpoint": "sharded"}
    whole, engine = _torch_run(_cfg(), options=one)  # one process, no process group
    trajectory = whole.run(progress=False).trajectory
    params = _full_params(engine)
    run, engine = _torch_run(_cfg(), options=one)
    while run.proxy_step < 7:
        run.step()
    engine.save_sharded(tmp_path / "one", run.state_dict(), step=7)
    out = tmp_path / "rank0.npz"
    torch_mp.spawn(_ddp_main, args=(2, _free_port(), str(out), str(tmp_path)), nprocs=2, join=True)
    got = dict(np.load(out))
    np.testing.assert_array_equal(got["resumed"], got["trajectory"])  # DDP: bitwise
    np.testing.assert_array_equal(got["resumed_params"], got["params"])
    assert int(got["distcp"]) == 2  # DCP split the replicated tensors between the ranks
    # 1 -> 2 ranks: the same run as one process, up to the order of float64 sums
    np.testing.assert_allclose(got["grown"], trajectory, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["grown_params"], params, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(got["trajectory"], trajectory, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- one process
def test_incomplete_or_tampered_steps_are_ignored(tmp_path):
    pytest.importorskip("torch")
    from tandem_torch import sharded

    run, engine = _torch_run(_cfg(), options={"checkpoint": "sharded"})
    run.step()
    first = engine.save_sharded(tmp_path, run.state_dict(), step=1)
    run.step()
    second = engine.save_sharded(tmp_path, run.state_dict(), step=2)
    assert sharded.latest(tmp_path) == second and not first.exists()  # older steps removed
    marker = json.loads((second / sharded.COMPLETE).read_text())
    assert set(marker) == {"step", "host_sha256", "files"} and marker["step"] == 2
    (tmp_path / "step-9.tmp").mkdir()  # a save killed before its marker
    (tmp_path / "step-8").mkdir()  # a folder without a marker
    assert sharded.latest(tmp_path) == second
    with open(second / sharded.HOST, "ab") as f:  # host state changed after the marker
        f.write(b"x")
    assert sharded.latest(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        engine.load_sharded(tmp_path)


def test_resaving_a_step_replaces_it(tmp_path):
    pytest.importorskip("torch")
    from tandem_torch import sharded

    run, engine = _torch_run(_cfg(), options={"checkpoint": "sharded"})
    run.step()
    engine.save_sharded(tmp_path, run.state_dict(), step=1)
    path = engine.save_sharded(tmp_path, run.state_dict(), step=1)
    assert sorted(os.listdir(tmp_path)) == ["step-1"] and sharded.latest(tmp_path) == path


def test_npz_stays_the_default():
    pytest.importorskip("torch")
    from tandem_core import ConfigError
    from tandem_torch import TorchOptions

    assert TorchOptions().checkpoint == "npz"
    _, engine = _torch_run(_cfg())
    assert {"proxy", "reference", "opt_u", "opt_w"} <= set(engine.state_dict())
    with pytest.raises(ConfigError, match="backend.checkpoint"):
        TorchOptions(checkpoint="zarr")


# ---------------------------------------------------------------------- memory during a save
MEMORY = dataclasses.replace(SMALL, vocab_size=512, seq_len=16, d_model=256, n_layer=4, n_head=4)


def _memory_main(rank, world, port, out, root):
    import torch
    import torch.distributed as dist
    from backend_kits import TorchKit
    from toy_data import toy_sampler

    import tandem_core as tc
    from tandem_adapters.bench import peak_rss_during
    from tandem_core.run import MixtureRun
    from tandem_core.run.gpt import init_gpt_params

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = _cfg(steps=4)
        kit = TorchKit()
        model = kit.model(MEMORY, init_gpt_params(MEMORY, 0), "float64")
        engine = kit.engine(model, cfg, 3, 1, options=SHARDED)
        run = MixtureRun(engine, toy_sampler(seq_len=16, vocab=512), cfg)
        run.run(progress=False)  # optimizer moments exist
        n = sum(p.numel() for p in engine.twins.proxy.parameters())  # the whole model's
        engine.checkpoint_format = "npz"

        def npz():
            state = run.state_dict()
            if rank == 0:
                tc.save_state(f"{root}/ckpt.npz", state)

        npz_mib = peak_rss_during(npz)
        engine.checkpoint_format = "sharded"
        sharded_mib = peak_rss_during(
            lambda: engine.save_sharded(f"{root}/dcp", run.state_dict(), step=run.proxy_step)
        )
        got = [None] * world
        dist.all_gather_object(got, (npz_mib, sharded_mib, n))
        if rank == 0:
            np.savez(out, rss=np.array([g[:2] for g in got]), params=n)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    sys.stderr.flush()
    os._exit(0)


def test_peak_memory_of_a_save_per_rank(tmp_path):
    """Peak RSS above the pre-save level, per rank: npz (full gather) vs sharded (DCP)."""
    torch_mp = pytest.importorskip("torch.multiprocessing")
    out = tmp_path / "rss.npz"
    args = (2, _free_port(), str(out), str(tmp_path))
    torch_mp.spawn(_memory_main, args=args, nprocs=2, join=True)
    got = np.load(out)
    params = int(got["params"])
    print(f"\n{params} float64 parameters per twin; peak RSS above the start of a save (MiB):")
    for rank, (npz, dcp_) in enumerate(got["rss"]):
        print(f"  rank {rank}: npz {npz:.1f}  sharded {dcp_:.1f}")
    assert (got["rss"] >= 0).all()


# ---------------------------------------------------------------------- the job (CLI) wiring
def test_job_with_sharded_checkpoints_resumes_bitwise(tmp_path, monkeypatch):
    """``optimize`` with ``backend.checkpoint="sharded"``: crash at 30, resume: same alphas."""
    pytest.importorskip("torch")
    from utils import small_job

    from tandem_adapters.config import JobConfig
    from tandem_adapters.jobs import optimize
    from tandem_adapters.run_dir import RunDir

    def config(run):
        sets = [*small_job(), "run.backend=torch", f'run.run_dir="{run}"', "train.steps=40"]
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
