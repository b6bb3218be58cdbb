"""Data-parallel jobs: a ``tandem`` command re-run under ``torchrun`` on this machine.

Every rank runs the same job on the same run directory (rank 0 writes it); ``torch.distributed``
then joins them in one process group (``distributed.init_from_env``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

__all__ = ["launch"]


def launch(argv: list[str], nproc: int, *, run_dir: str) -> int | None:
    """Re-run ``tandem`` with ``argv`` in ``nproc`` processes (``torch.distributed.run``).

    Args:
        argv: the command's arguments (after ``tandem``); ``--nproc`` is dropped from them.
        nproc: processes on this machine (127.0.0.1, a free port).
        run_dir: the run directory every rank must share (no per-rank timestamp).

    Returns:
        The exit status of the parallel job, or ``None`` when this process should run the job
        itself (``nproc <= 1``, or already a torchrun worker: ``WORLD_SIZE`` is set).
    """
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args, skip = [], False
    for item in argv:  # drop --nproc: each rank runs the job itself
        if skip or item.startswith("--nproc="):
            skip = False
            continue
        skip = item == "--nproc"
        if not skip:
            args.append(item)
    args += ["--set", f'run.run_dir="{run_dir}"', "--set", f"backend.nproc={nproc}"]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        "-m",
        "tandem_adapters.cli",
        *args,
    ]
    return subprocess.run(cmd, check=False).returncode
