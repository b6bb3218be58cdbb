"""``tandem taskpgm``: a static task mixture from task affinities (docs/methods.md, "TaskPGM")."""

from __future__ import annotations

import argparse
import json

import numpy as np

from ._common import add_config_options, known_answer_notes, load_job, mixture_table, verdict


def register(sub: argparse._SubParsersAction) -> None:
    """Add the subcommand."""
    p = sub.add_parser(
        "taskpgm",
        help="static task mixture from single-task fine-tunes and their behavioural affinities",
        description="TaskPGM: fine-tune the base model on each task (each training domain) alone, "
        "measure pairwise Jensen-Shannon divergences of the fine-tuned models on a probe set, "
        "and minimise the energy -u.p + 1/2 p'Ap on the simplex (settings: the [taskpgm] "
        "table). Writes mixture.json (the `tandem optimize` format, for `tandem train "
        "--mixture`), taskpgm.json and affinity.png. Without --tasks it runs on [data] (by "
        "default the built-in planted suite, probed on its target set). With --tasks and no "
        "validation option (data.val_path, data.val_fraction, data.target_path, --probe), "
        "10% of each task is held out (data.val_fraction=0.1) as the probe set.",
    )
    p.add_argument("--tasks", "-t", help="folder with one sub-folder or file per task (data.path)")
    p.add_argument(
        "--probe", "-p", help="probe set: a file or folder (default: the tasks' validation data)"
    )
    add_config_options(
        p, "[run] [data] [model] [train] [taskpgm]", "--set taskpgm.lam=2 --set run.backend=jax"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run in run.run_dir")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(run=run, resume=False, nproc=None)  # single process: no --resume, --nproc


def run(args: argparse.Namespace) -> int:
    """Run the job and print the mixture."""
    from ..taskpgm_job import run_taskpgm

    sets = list(args.set)
    if args.tasks:  # first, so an explicit --set data.path still wins
        sets.insert(0, f"data.path={json.dumps(str(args.tasks))}")
    if args.probe:
        sets.insert(0, f"taskpgm.probe={json.dumps(str(args.probe))}")
    args.set = sets
    cfg = load_job(args, "taskpgm")
    d = cfg.data
    if args.tasks and not (d.val_path or d.val_fraction or d.target_path or cfg.taskpgm.probe):
        cfg = cfg.replace(data={"val_fraction": 0.1})
        print("tandem taskpgm: no validation data given: holding out 10% of each task as probe")
    print(f"tandem taskpgm: backend={cfg.run.backend} -> {cfg.run.run_dir}")
    out = run_taskpgm(cfg, overwrite=args.overwrite, echo=print)
    n = len(out.tasks)
    columns = {"taskpgm": out.p, "uniform": np.full(n, 1 / n), "utility": out.u}
    print(mixture_table(out.tasks, columns, known_answer_notes(out.known_answer)))
    for line in verdict(out.tasks, out.p, out.known_answer):
        print(line)
    if out.subset is not None:
        print(f"greedy subset (budget {cfg.taskpgm.budget}): {', '.join(out.subset)}")
    if n > 1:
        off = np.where(np.eye(n, dtype=bool), -np.inf, out.S)
        i, j = np.unravel_index(int(np.argmax(off)), off.shape)
        print(f"most similar tasks: {out.tasks[i]} ~ {out.tasks[j]} (S = {out.S[i, j]:.3f})")
    print(
        f"wrote {out.run_dir}/mixture.json (average = the mixture to use), taskpgm.json "
        "(D, S, u, losses), affinity.png"
    )
    return 0
