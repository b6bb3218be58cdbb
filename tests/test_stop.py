"""Processes agree on stopping: ``MixtureRun.stop_requested`` polls ``engine.any_process``."""

import pytest
from utils import small_job

pytest.importorskip("torch")

from tandem_adapters.config import JobConfig  # noqa: E402
from tandem_adapters.jobs import build_run, load_corpus  # noqa: E402


def _run(monkeypatch, others_stop_at: int | None = None):
    """A tiny torch run whose engine pretends to be one of 2 processes.

    The other process "asks to stop" from its ``others_stop_at``-th poll on.
    """
    cfg = JobConfig.load(overrides=[*small_job("train.steps=40"), "run.progress=false"])
    run = build_run(cfg, load_corpus(cfg.data, progress=False))
    polls: list[bool] = []

    def any_process(flag: bool) -> bool:
        polls.append(flag)
        return flag or (others_stop_at is not None and len(polls) >= others_stop_at)

    monkeypatch.setattr(type(run.engine), "processes", property(lambda self: 2))
    monkeypatch.setattr(run.engine, "any_process", any_process, raising=False)
    return run, polls


def test_a_local_stop_waits_for_the_next_poll_and_every_process_learns_it(monkeypatch):
    run, polls = _run(monkeypatch)
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 4  # asked to stop before the 4th tick

    run.should_stop = should_stop
    run.run(progress=False, stop_every=3)
    # polls at ticks 0, 3, 6: the flag raised at tick 3 is seen there, the run stops then
    assert polls == [False, True]
    assert run.tick == 3 and not run.done


def test_another_process_stops_this_one_at_the_same_tick(monkeypatch):
    run, polls = _run(monkeypatch, others_stop_at=3)
    run.run(progress=False, stop_every=5)
    assert polls == [False, False, False]  # never asked here; the third poll says "stop"
    assert run.tick == 10 and not run.done


def test_one_process_polls_every_tick_without_a_collective(monkeypatch):
    run, polls = _run(monkeypatch)
    monkeypatch.setattr(type(run.engine), "processes", property(lambda self: 1))
    run.should_stop = lambda: run.tick >= 2
    run.run(progress=False, stop_every=5)
    assert polls == [] and run.tick == 2
