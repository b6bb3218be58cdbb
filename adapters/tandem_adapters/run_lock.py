"""The run directory's lock: one live run owns a directory.

An exclusive ``flock`` on ``run_dir/.lock`` (the file names the holder's pid, host and start
time). The OS drops the lock when the process ends, however it ends, so a crashed run never
leaves the directory locked; a second run is refused with a message naming the holder. The
holders of one process share (count) its lock. Where ``flock`` does not exist (Windows), runs
are not locked.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # no flock (Windows): runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunDirLocked", "RunLock", "run_lock"]

LOCK_NAME = ".lock"


class RunDirLocked(FileExistsError):
    """The run directory belongs to another live run (the message names it)."""


@contextlib.contextmanager
def run_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``path``'s run lock for a block (e.g. a job that runs several runs below it).

    Raises:
        RunDirLocked: another live process holds it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock.acquire(path)
    try:
        yield path
    finally:
        lock.release()


class RunLock:
    """An exclusive ``flock`` on ``folder/.lock``, shared (counted) by the holders of a process."""

    _held: dict[tuple[int, int], RunLock] = {}  # (device, inode) of the folder -> its lock

    def __init__(self, key: tuple[int, int], file: Path, fd: int) -> None:
        self.key, self.file, self.fd, self.count, self.pid = key, file, fd, 1, os.getpid()

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        """Take ``folder``'s lock (or count one more holder in this process).

        Raises:
            RunDirLocked: another live process holds it.
        """
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        held = cls._held.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            return held
        file = folder / LOCK_NAME
        fd = _locked_fd(file, folder)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        cls._held[key] = lock = cls(key, file, fd)
        return lock

    def release(self) -> None:
        """Drop one holder; the last one removes the lock file and closes it."""
        if self.pid != os.getpid() or self.fd < 0:  # a forked child never releases its parent's
            return
        self.count -= 1
        if self.count:
            return
        del self._held[self.key]
        try:
            with contextlib.suppress(OSError):
                self.file.unlink()  # while still holding it: a waiter re-checks the inode
        finally:
            os.close(self.fd)
            self.fd = -1


def _locked_fd(file: Path, folder: Path) -> int:
    """An fd of ``file`` holding its exclusive lock (the file still at that path)."""
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunDirLocked(
                f"{folder} is in use by another run ({holder}); wait for it to end, or use "
                "another run_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.stat(file), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it as we opened it: take the new one
            return fd
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is starting"
