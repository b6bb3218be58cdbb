"""``tandem`` subcommands: one module each, with ``register(subparsers)``; ``args.run(args)``."""

COMMANDS = (
    "optimize",
    "train",
    "compare",
    "plot",
    "taskpgm",
    "bench",
    "prepare",
    "export",
    "config",
)
