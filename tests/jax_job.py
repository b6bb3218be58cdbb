"""``tandem optimize`` in one process of a JAX job, with probes for the multi-process tests.

Usage: ``python jax_job.py REPORT [--die-at-save STEP] -- CLI-ARGS...``

It runs ``tandem_adapters.cli.main(CLI-ARGS)`` and writes REPORT (JSON): this process's index,
the engine's process count, ``any_process(this process is 1)``, every distinct
``(global rows, [rows of each of this process's shards])`` that ``JaxEngine.batch`` placed, and
the exit status. ``--die-at-save STEP``: the sharded save of STEP raises on every process after
its shards are written and before the COMPLETE marker (the process "dies" there).
"""

import json
import sys


def main(argv: list[str]) -> int:
    report, rest = argv[0], argv[1:]
    die_at = None
    if rest[:1] == ["--die-at-save"]:
        die_at, rest = int(rest[1]), rest[2:]
    assert rest[:1] == ["--"], argv
    cli_args = rest[1:]

    from tandem_jax import checkpoint
    from tandem_jax.engine import JaxEngine

    seen: dict = {"rows": set(), "any": None, "processes": None}
    place = JaxEngine.batch

    def batch(self, host_batch):
        out = place(self, host_batch)
        if seen["any"] is None:  # the first batch: every process gets here at the same point
            import jax

            seen["processes"] = self.processes
            seen["any"] = self.any_process(jax.process_index() == 1)
        tokens = out["tokens"]
        local = tuple(sorted(s.data.shape[0] for s in tokens.addressable_shards))
        seen["rows"].add((tokens.shape[0], local))
        return out

    JaxEngine.batch = batch
    if die_at is not None:

        def die(tmp):
            if tmp.name == f"step-{die_at}.tmp":
                raise RuntimeError(f"killed during the save of {tmp.name}")

        checkpoint._before_commit = die

    from tandem_adapters.cli import main as cli

    status = cli(cli_args)
    import jax

    with open(report, "w") as f:
        json.dump(
            {
                "process": jax.process_index(),
                "processes": seen["processes"],
                "any": seen["any"],
                "rows": sorted([rows, list(local)] for rows, local in seen["rows"]),
                "status": status,
            },
            f,
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
