"""Data-parallel jobs: a ``tandem`` command re-run under ``torchrun`` on this machine.

Every rank runs the same job on the same run directory (rank 0 writes it); ``torch.distributed``
then joins them in one process group (``distributed.init_from_env``).

The ranks' stderr goes through this process: ordinary output (warnings, each rank's one-line
``tandem:`` errors, once) is passed on as it comes, tracebacks and torchrun's failure report are
held back and summarised in one line naming the failed rank and its cause. An interrupted job
(SIGINT / SIGTERM to this process or its process group) exits 130 / 143 like a single process.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable

__all__ = ["launch", "summarize_failure"]

# lines that start a traceback or torchrun's failure report: held back from then on
_NOISE = re.compile(r"^(\[(rank|default)\d+\]:|Traceback \(most recent call last\))")
_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d")  # torch's logging lines (torchrun's notes)
_OWN = (1, 2, 130, 143)  # tandem's exit statuses: a rank that exits with one said why


def launch(argv: list[str], nproc: int, *, run_dir: str) -> int | None:
    """Re-run ``tandem`` with ``argv`` in ``nproc`` processes (``torch.distributed.run``).

    Args:
        argv: the command's arguments (after ``tandem``); ``--nproc`` is dropped from them.
        nproc: processes on this machine (127.0.0.1, a free port).
        run_dir: the run directory every rank must share (no per-rank timestamp).

    Returns:
        The exit status of the parallel job (a rank's own status, 1 for a crashed or killed
        rank, 130 / 143 when interrupted), or ``None`` when this process should run the job
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
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        stderr = _Stderr(proc.stderr)
        with _forward_sigterm(proc) as received:
            code = _wait(proc, received)
        stderr.join()
    if received:  # the user stopped the job: the ranks saved a checkpoint if they were training
        if not stderr.said:
            print(f"tandem: interrupted (signal {received[0]})", file=sys.stderr)
        return 128 + received[0]
    if code == 0:
        return 0
    status, message = summarize_failure(stderr.lines, code)
    if message is None and not stderr.said:
        message = f"the parallel job failed (exit status {status})"
    if message is not None:
        print(f"tandem: {message}", file=sys.stderr)
    return status


def _wait(proc: subprocess.Popen, received: list[int]) -> int:
    """Torchrun's exit status; after Ctrl-C (sent to the whole group) it waits for the ranks."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            if not received:
                received.append(int(signal.SIGINT))


@contextlib.contextmanager
def _forward_sigterm(proc: subprocess.Popen):
    """SIGTERM to this process reaches torchrun (which stops the ranks); records the signal."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        del frame
        if not received:
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield received
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Stderr:
    """Reads the ranks' stderr in a thread: passes ordinary lines on, keeps the last ones."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=500)
        self.said: set[str] = set()  # "tandem: ..." messages passed on (each once)
        self._quiet = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Iterable[str]) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us: a rank outlived us
            self._lines(stream)

    def _lines(self, stream: Iterable[str]) -> None:
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("tandem: "):  # a rank's own one-line error or note
                if line[len("tandem: ") :] not in self.said:
                    self.said.add(line[len("tandem: ") :])
                    print(line, file=sys.stderr, flush=True)
                continue
            self._quiet = self._quiet or bool(_NOISE.match(line))
            if not (self._quiet or _LOG.match(line)):
                print(line, file=sys.stderr, flush=True)

    def join(self) -> None:
        self._thread.join(timeout=10)


def summarize_failure(lines: Iterable[str], code: int) -> tuple[int, str | None]:
    """``(exit status, one-line summary)`` of a failed torchrun job from its stderr.

    The summary names the first failed rank (torchrun's "Root Cause") and its cause: the signal
    that killed it, or its last exception. A rank that exited with one of tandem's statuses
    (1, 2, 130, 143) without an exception has said why in its own ``tandem:`` line: its status
    is passed on and the summary is ``None``.
    """
    lines = list(lines)
    text = "\n".join(lines)
    root = text[text.find("Root Cause") :] if "Root Cause" in text else text
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", root, re.M)
    exitcode = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", root, re.M)
    if rank is None or exitcode is None:
        last = next((x.strip() for x in reversed(lines) if x.strip()), "no error output")
        return 1, f"the parallel job failed (torchrun exit status {code}): {last}"
    r, c = int(rank.group(1)), int(exitcode.group(1))
    if c < 0:
        try:
            name = signal.Signals(-c).name
        except ValueError:
            name = f"signal {-c}"
        return 1, (
            f"rank {r} was killed by {name}; the other ranks stopped with it (--resume "
            "continues from the last checkpoint, if one was saved)"
        )
    error = _last_exception(lines, r)
    if error is not None:
        return 1, f"rank {r} failed: {error}"
    if c in _OWN:
        return c, None
    return 1, f"rank {r} failed with exit status {c}"


def _last_exception(lines: list[str], rank: int) -> str | None:
    """The last ``Error: message`` line that rank ``rank`` printed (``[rankN]:`` prefixed)."""
    prefix = f"[rank{rank}]: "
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")
    for line in reversed(lines):
        body = line[len(prefix) :] if line.startswith(prefix) else None
        if body is not None and pattern.match(body):
            return body.strip()
    return None
