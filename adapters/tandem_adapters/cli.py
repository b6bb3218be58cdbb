"""The ``tandem`` command line: optimize, train, compare, plot and the other subcommands."""

from __future__ import annotations

import argparse
import importlib
import os
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

    Exit status: 0 done, 1 bad data or input, 2 bad configuration, 130/143 interrupted (SIGINT /
    SIGTERM: a checkpoint was saved, continue with ``--resume``).
    """
    from .data import DataError
    from .jobs import Interrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        argv = ["optimize", *argv]
        args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except tc.ConfigError as err:
        print(f"tandem: configuration error: {err}", file=sys.stderr)
        return 2
    except (DataError, FileExistsError, FileNotFoundError, tc.CorruptStateError) as err:
        print(f"tandem: {err}", file=sys.stderr)
        return 1
    except tc.NonFiniteError as err:
        print(f"tandem: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"tandem: {err}", file=sys.stderr)
        return 143 if "signal 15" in str(err) else 130


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
