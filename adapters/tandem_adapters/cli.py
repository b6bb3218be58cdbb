"""The ``tandem`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tandem`` console script."""
    parser = argparse.ArgumentParser(prog="tandem", description="Online data-mixture optimisation.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    import tandem_core

    if args.version:
        print(tandem_core.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
