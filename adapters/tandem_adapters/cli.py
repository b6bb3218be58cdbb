"""The ``tandem`` command line: optimize, train, compare, plot and the other subcommands."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys

import tandem_core as tc

from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="tandem", description="Online data-mixture optimisation.")
    parser.add_argument("--version", action="version", version=f"tandem {tc.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tandem_adapters.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tandem`` console script; returns the exit status.

    Exit status: 0 done, 1 bad data, a failed run or a file that cannot be written, 2 bad
    configuration, 130/143 interrupted (SIGINT / SIGTERM: in the training loop a checkpoint was
    saved, continue with ``--resume``). Every error is one line on stderr, never a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        argv = ["optimize", *argv]
        args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as err:
        status, message = _failure(err, args)
        if status is None:
            raise
        print(f"tandem: {message}", file=sys.stderr)
        return status


# OS errors of writing the run directory or reading the data: one line, exit 1
_FILE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
}


def _failure(err: BaseException, args: argparse.Namespace) -> tuple[int | None, str]:
    """``(exit status, one-line message)`` of an error; status ``None``: not ours (re-raised)."""
    from .data import DataError
    from .jobs import Interrupted

    if isinstance(err, tc.ConfigError):
        return 2, f"configuration error: {err}"
    if isinstance(err, Interrupted):
        return (130 if err.signum == signal.SIGINT else 143), str(err)
    if isinstance(err, KeyboardInterrupt):
        return 130, "interrupted (Ctrl-C)"
    if isinstance(err, (DataError, tc.CorruptStateError, tc.NonFiniteError)):
        return 1, str(err)
    if isinstance(err, OSError) and err.errno in _FILE_ERRNOS:
        where = err.filename or getattr(args, "run_dir", None) or "a file"
        return 1, f"{where}: {err.strerror or err}"
    if isinstance(err, (FileExistsError, FileNotFoundError)):  # tandem's own, without errno
        return 1, str(err)
    return None, ""


def _exit_worker(code: int) -> None:
    """End a ``torchrun`` worker: leave the process group, flush, exit without interpreter teardown.

    Everything is written (atomically) by now. PyTorch asks for ``destroy_process_group`` before
    exit; even then, a gloo rank sometimes aborts in interpreter finalization ("terminate called
    without an active exception", pytorch/pytorch#179291), and torchrun would report a finished
    job as failed.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    status = main()
    if "WORLD_SIZE" in os.environ:
        _exit_worker(status)
    sys.exit(status)
