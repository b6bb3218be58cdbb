"""Beyond one machine, simulated on 127.0.0.1: two torchrun "nodes" and two JAX processes.

torch: each node is ``torchrun --nnodes 2`` with a c10d rendezvous, one rank each, running
``-m tandem_adapters.cli optimize`` on one shared run directory (rank 0 writes it). JAX: two
processes joined by ``jax.distributed`` (the ``JAX_*`` environment), each with two CPU devices,
one ``data`` mesh over all four: every process computes half of each batch (``jax_job.py``
reports the shards it placed), and orbax writes the sharded checkpoints.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from utils import set_args, small_job, wait_for_rows

pytestmark = [pytest.mark.dist, pytest.mark.slow]
TORCH_JOB = small_job(
    'run.backend="torch"', 'train.dtype="float64"', "backend.threads=1", "train.log_every=2"
)
JAX_JOB = small_job(
    'run.backend="jax"',
    'train.dtype="float64"',
    "train.log_every=2",
    "train.steps=24",
    "train.free_steps=2",
)
JAX_JOB_SCRIPT = str(Path(__file__).with_name("jax_job.py"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
JAX_ENV = {**ENV, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(run_dir: Path, *items: str) -> list[str]:
    """``-m tandem_adapters.cli optimize`` arguments of the tiny job on ``run_dir``."""
    sets = set_args(*TORCH_JOB, f"run.run_dir={json.dumps(str(run_dir))}", *items)
    return ["-m", "tandem_adapters.cli", "optimize", *sets, "-q"]


def _nodes(run_dir: Path, *items: str, extra: tuple = ()) -> list[subprocess.Popen]:
    """Two torchrun agents ("nodes") of one job, joined by a c10d rendezvous on 127.0.0.1."""
    port = _free_port()
    rdzv = [
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id=tandem-{port}",
        "--local-addr=127.0.0.1",  # the nodes reach rank 0's store by this address
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, *_cli(run_dir, *items), *extra]
    return [
        subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for every process; each must exit 0. Returns their stderr."""
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        errs.append(err)
    return errs


def _single(run_dir: Path, *items: str, extra: tuple = ()) -> None:
    proc = subprocess.run(
        [sys.executable, *_cli(run_dir, *items), *extra],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _mixture(run_dir: Path) -> dict:
    return json.loads((run_dir / "mixture.json").read_text())


def _rank_of_node(node: subprocess.Popen) -> int:
    """The ``RANK`` of the worker that the torchrun agent ``node`` started (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != node.pid:
                continue
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours
        for item in env:
            if item.startswith(b"RANK="):
                return int(item[5:])
    raise AssertionError(f"no worker below torchrun {node.pid}")


def _kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks in /proc")
def test_torch_two_nodes_equal_one_process_and_resume_after_sigterm(tmp_path):
    pytest.importorskip("torch")
    whole, one, cut = tmp_path / "whole", tmp_path / "one", tmp_path / "cut"
    steps = "train.steps=40"
    nodes = _nodes(whole, steps)
    try:
        _finish(nodes)
    finally:
        _kill_all(nodes)
    _single(one, steps)
    np.testing.assert_allclose(  # float64: the ranks' reductions only reorder sums
        _mixture(whole)["trajectory"], _mixture(one)["trajectory"], rtol=1e-6
    )
    # a scheduler stops the node that holds rank 0: it saves, the other node's rank fails
    nodes = _nodes(cut, steps)
    try:
        wait_for_rows(cut / "metrics.jsonl", 3, nodes[0])
        first = next(n for n in nodes if _rank_of_node(n) == 0)
        first.send_signal(signal.SIGTERM)
        for node in nodes:
            node.communicate(timeout=120)
    finally:
        _kill_all(nodes)
    assert first.returncode != 0 and (cut / "checkpoint.npz").exists()
    assert not (cut / "mixture.json").exists()  # stopped before the end
    # --resume on two nodes again finishes the same run
    nodes = _nodes(cut, steps, extra=("--resume",))
    try:
        _finish(nodes)
    finally:
        _kill_all(nodes)
    a, b = _mixture(whole), _mixture(cut)
    assert a["trajectory"] == b["trajectory"] and a["average"] == b["average"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks in /proc")
def test_torch_sigterm_to_the_other_node_stops_every_rank_with_a_checkpoint(tmp_path):
    """A signal that reaches only the node WITHOUT rank 0: the ranks agree to stop.

    Every ``run.stop_check_every`` ticks the ranks all-reduce their stop flags, so rank 0 (never
    signalled) stops after the same tick as the signalled rank, and saves; the resume on two
    nodes then equals an uninterrupted run bit for bit.
    """
    pytest.importorskip("torch")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    items = ("train.steps=60", "run.stop_check_every=2")
    nodes = _nodes(whole, *items)
    try:
        _finish(nodes)
    finally:
        _kill_all(nodes)
    nodes = _nodes(cut, *items)
    try:
        wait_for_rows(cut / "metrics.jsonl", 3, nodes[0])
        other = next(n for n in nodes if _rank_of_node(n) != 0)
        other.send_signal(signal.SIGTERM)
        errs = [node.communicate(timeout=120)[1] for node in nodes]
    finally:
        _kill_all(nodes)
    assert all(node.returncode != 0 for node in nodes)
    assert (cut / "checkpoint.npz").exists() and not (cut / "mixture.json").exists()
    said = "\n".join(errs)
    assert "stopped by another process" in said and "stopped by signal 15" in said, said[-3000:]
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    nodes = _nodes(cut, *items, extra=("--resume",))
    try:
        _finish(nodes)
    finally:
        _kill_all(nodes)
    a, b = _mixture(whole), _mixture(cut)
    assert a["trajectory"] == b["trajectory"] and a["average"] == b["average"]
    assert rows and rows[-1]["step"] < 60  # it did stop early


def _jax_env(port: int, process_id: int, processes: int = 2) -> dict:
    """Process ``process_id`` of ``processes`` on 127.0.0.1, with two CPU devices of its own."""
    return {
        **JAX_ENV,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(processes),
        "JAX_PROCESS_ID": str(process_id),
    }


def _jax_cli(run_dir: Path, *items: str) -> list[str]:
    sets = set_args(*JAX_JOB, f"run.run_dir={json.dumps(str(run_dir))}", *items)
    return [sys.executable, "-m", "tandem_adapters.cli", "optimize", *sets, "-q"]


def _jax_job(
    run_dir: Path, *items: str, processes: int = 2, die_at_save: int = 0, extra: tuple = ()
) -> list[tuple[subprocess.Popen, Path]]:
    """``processes`` JAX processes of one job (``jax_job.py``: the CLI plus a report each)."""
    port = _free_port()
    sets = set_args(*JAX_JOB, f"run.run_dir={json.dumps(str(run_dir))}", *items)
    sets += set_args("backend.distributed=true", "backend.devices=2")
    die = ("--die-at-save", str(die_at_save)) if die_at_save else ()
    out = []
    for i in range(processes):
        report = run_dir.with_name(f"{run_dir.name}-report{i}.json")
        report.unlink(missing_ok=True)  # an earlier job's on the same run directory
        cmd = [sys.executable, JAX_JOB_SCRIPT, str(report), *die, "--", "optimize", *sets, "-q"]
        env = _jax_env(port, i, processes)
        proc = subprocess.Popen(
            [*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out.append((proc, report))
    return out


def _jax_finish(job: list, *, ok: bool = True) -> list[dict]:
    """Wait for every process of ``job``; with ``ok`` each must exit 0. Returns the reports."""
    procs = [proc for proc, _ in job]
    try:
        if ok:
            _finish(procs)
        else:
            for proc in procs:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode != 0, err[-3000:]
    finally:
        _kill_all(procs)
    return [json.loads(report.read_text()) for _, report in job if report.exists()]


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's rows less the wall-clock times: equal rows are bit-identical numbers."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in rows]


@pytest.fixture(scope="module")
def jax_two(tmp_path_factory, request):
    """One uninterrupted 2-process JAX job (two CPU devices each) and its reports."""
    pytest.importorskip("jax")
    cache = str(request.config.cache.mkdir("jax-compilation"))
    with pytest.MonkeyPatch.context() as mp:  # the subprocesses compile once, not once each
        mp.setitem(JAX_ENV, "JAX_COMPILATION_CACHE_DIR", cache)
        mp.setitem(JAX_ENV, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        mp.setitem(JAX_ENV, "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        run_dir = tmp_path_factory.mktemp("jax") / "two"
        yield run_dir, _jax_finish(_jax_job(run_dir))


def test_jax_two_processes_shard_the_batch_and_equal_one_process(jax_two, tmp_path):
    """One mesh over both processes: each computes half of every batch; one process's mixture."""
    two, reports = jax_two
    one = tmp_path / "one"
    solo = subprocess.run(_jax_cli(one), env=JAX_ENV, capture_output=True, text=True, timeout=300)
    assert solo.returncode == 0, solo.stderr[-3000:]
    np.testing.assert_allclose(_mixture(two)["trajectory"], _mixture(one)["trajectory"], rtol=1e-6)
    assert len(_mixture(one)["trajectory"]) > 2  # several mixture updates
    assert sorted(r["process"] for r in reports) == [0, 1]
    for report in reports:
        assert report["processes"] == 2 and report["any"] is True  # process 1 said True
        assert report["rows"], report
        for rows, local in report["rows"]:  # train, val and eval batches alike
            assert local == [rows // 4, rows // 4], (rows, local)  # 2 devices here, 4 in all


def test_jax_sharded_checkpoints_two_processes_resume_on_two_and_on_one(jax_two, tmp_path):
    """orbax shards: a save killed on both processes is ignored; 2 -> 2 bitwise, 2 -> 1 close."""
    pytest.importorskip("orbax.checkpoint")
    two, _ = jax_two
    cut = tmp_path / "cut"
    items = ('backend.checkpoint="sharded"', "run.checkpoint_every=8")
    _jax_finish(_jax_job(cut, *items, die_at_save=16), ok=False)
    shards = cut / "checkpoint.sharded"
    assert sorted(os.listdir(shards)) == ["step-16.tmp", "step-8"]  # no marker: ignored
    assert not (cut / "mixture.json").exists()
    wrote = sorted(os.listdir(shards / "step-8" / "shards" / "array_metadatas"))
    assert wrote == ["process_0", "process_1"]  # each process wrote its part
    alone = tmp_path / "alone"
    shutil.copytree(cut, alone)
    # 2 -> 2: the same run, bit for bit (every loss and weight of metrics.jsonl)
    _jax_finish(_jax_job(cut, *items, extra=("--resume",)))
    assert _rows(cut) == _rows(two)
    assert _mixture(cut)["trajectory"] == _mixture(two)["trajectory"]
    assert sorted(os.listdir(shards)) == ["step-24"]
    # 2 -> 1: one process with two devices finishes the run (float64 sums in another order)
    _jax_finish(_jax_job(alone, *items, processes=1, extra=("--resume",)))
    np.testing.assert_allclose(
        _mixture(alone)["trajectory"], _mixture(two)["trajectory"], rtol=1e-6
    )


def test_jax_sigterm_to_one_process_stops_both_with_a_checkpoint(jax_two, tmp_path):
    """Process 1 alone is signalled; the processes agree to stop, save, and resume exactly."""
    two, _ = jax_two
    cut = tmp_path / "cut"
    job = _jax_job(cut, "run.stop_check_every=2")
    try:
        wait_for_rows(cut / "metrics.jsonl", 3, job[0][0])
        job[1][0].send_signal(signal.SIGTERM)
        errs = [proc.communicate(timeout=120)[1] for proc, _ in job]
    finally:
        _kill_all([proc for proc, _ in job])
    assert all(proc.returncode != 0 for proc, _ in job)
    said = "\n".join(errs)
    assert "stopped by another process" in said and "stopped by signal 15" in said, said[-3000:]
    assert (cut / "checkpoint.npz").exists() and not (cut / "mixture.json").exists()
    assert _rows(cut)[-1]["step"] < 24  # it did stop early
    _jax_finish(_jax_job(cut, "run.stop_check_every=2", extra=("--resume",)))
    assert _rows(cut) == _rows(two)
