import numpy as np
import pytest
from utils import asarray, jit

import tandem_core as tc
from tandem_core.schedule import Schedule

P = tc.Phase


def test_episode_layout_free_meaning():
    got = [tc.phase(t, 2, 3) for t in range(14)]
    one = [P.SYNC, P.PROBE, P.PROBE, P.UPDATE, P.FREE, P.FREE, P.FREE]
    assert got == one + one
    assert [tc.episode(t, 2, 3) for t in (0, 6, 7, 13)] == [0, 0, 1, 1]


def test_total_meaning_counts_probe_steps():
    s = Schedule(probe_steps=2, free_steps=5, episode="total")
    assert s.free == 3 and s.proxy_steps == 5 and s.length == 7
    assert [s.phase(t) for t in range(7)] == [
        P.SYNC,
        P.PROBE,
        P.PROBE,
        P.UPDATE,
        P.FREE,
        P.FREE,
        P.FREE,
    ]
    with pytest.raises(ValueError, match="E must be >= K"):
        _ = Schedule(3, 2, "total").length


def test_proxy_steps_before_counts_training_steps():
    s = Schedule(2, 3)
    counted, steps = 0, []
    for t in range(3 * s.length):
        steps.append(s.proxy_steps_before(t))
        counted += s.phase(t) in (P.PROBE, P.FREE)
    assert steps[-1] == counted - 1 if s.phase(3 * s.length - 1) == P.FREE else True
    assert s.proxy_steps_before(3 * s.length) == 3 * s.proxy_steps == counted


def test_k_equal_one_and_no_free_steps():
    assert [tc.phase(t, 1, 0) for t in range(6)] == [P.SYNC, P.PROBE, P.UPDATE] * 2


@pytest.mark.parametrize(
    "args, msg",
    [((0, 3), "probe_steps \\(K\\) must be >= 1"), ((2, -1), "free_steps \\(E\\) must be >= 0")],
)
def test_invalid_schedules(args, msg):
    with pytest.raises(ValueError, match=msg):
        tc.phase(0, *args)
    with pytest.raises(ValueError, match="episode='steps' is not supported"):
        tc.phase(0, 1, 1, episode="steps")


def test_phase_code_matches_phase(xp):
    ticks = np.arange(40)
    codes = jit(xp, lambda t: tc.phase_code(t, 3, 4))(asarray(xp, ticks))
    assert np.asarray(codes).tolist() == [int(tc.phase(int(t), 3, 4)) for t in ticks]


@pytest.mark.parametrize(
    "args, msg",
    [
        ((-1, 5), r"probe_steps \(K\) must be >= 1, got -1"),
        ((2.5, 3), r"probe_steps \(K\) must be an integer >= 1, got 2.5"),
        ((True, 3), r"probe_steps \(K\) must be an integer >= 1, got True"),
        ((2, -1), r"free_steps \(E\) must be >= 0, got -1"),
        ((2, "3"), r"free_steps \(E\) must be an integer >= 0, got '3'"),
        ((3, 2, "total"), "E must be >= K"),
        ((1, 1, "steps"), "episode='steps' is not supported"),
    ],
)
def test_schedule_is_validated_on_construction(args, msg):
    with pytest.raises(ValueError, match=msg):
        Schedule(*args)


def test_schedule_accepts_numpy_integers_and_checks_ticks():
    s = Schedule(np.int64(2), np.int32(3))
    assert s.length == 7 and s.phase(np.int64(3)) == P.UPDATE
    assert Schedule(2, 3, episode="total") == (2, 3, "total")
    for tick in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"tick must be an integer >= 0, got {tick}"):
            s.phase(tick)
    with pytest.raises(ValueError, match="tick must be an integer >= 0"):
        s.proxy_steps_before(-3)


@pytest.mark.parametrize(
    "k, e, episode", [(5, 20, "free"), (2, 3, "free"), (1, 0, "free"), (3, 7, "total")]
)
def test_updates_counts_the_mixture_updates_of_a_run(k, e, episode):
    s = Schedule(k, e, episode)
    for steps in range(0, 4 * s.proxy_steps + 3):
        taken = updates = 0
        for t in range(10 * s.length):  # walk the ticks until `steps` proxy steps are done
            if taken == steps:
                break
            p = s.phase(t)
            taken += p in (P.PROBE, P.FREE)
            updates += p == P.UPDATE and taken < steps  # an update with training left after it
        assert s.updates(steps) == updates, (steps, s)


def test_budget_step_size_by_hand():
    assert tc.budget_step_size(4.0, 5, 24) == pytest.approx(4.0 * np.sqrt(np.log(5) / 24))
    assert tc.budget_step_size(2.0, 2, 1) == pytest.approx(2.0 * np.sqrt(np.log(2)))
    assert tc.budget_step_size(3.0, 1, 10) == 3.0  # nothing to mix
    assert tc.budget_step_size(1.0, 4, 0) == tc.budget_step_size(1.0, 4, 1)  # T < 1 counts as 1
    # a four times longer run takes half the step
    assert tc.budget_step_size(1.0, 7, 400) == pytest.approx(tc.budget_step_size(1.0, 7, 100) / 2)


@pytest.mark.parametrize(
    "args, msg",
    [((0.0, 3, 5), "scale must be > 0"), ((np.inf, 3, 5), "scale"), ((1.0, 0, 5), "num_domains")],
)
def test_budget_step_size_rejects_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        tc.budget_step_size(*args)
