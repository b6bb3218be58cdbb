"""Every registered method (entry points ``tandem.methods``, built-ins and plugins alike) keeps the
shared invariants (tests/method_checks.py), and the registry behaves."""

import numpy as np
import pytest
from method_checks import check_record, check_run_and_resume, check_transform

import tandem_core as tc
from tandem_core import methods
from tandem_core.methods import Method, Signal, all_methods, get_method

BUILT_IN = {"tandem", "doremi", "doge", "uniform", "natural", "temperature"}
NAMES = sorted(m.name for m in all_methods())


def test_built_ins_register_through_entry_points():
    assert BUILT_IN <= set(methods.available_methods())
    for name in BUILT_IN:
        record = get_method(name)
        assert isinstance(record, Method) and record.name == name


@pytest.mark.parametrize("name", NAMES)
def test_transform_invariants(xp, name):
    check_transform(get_method(name), xp)


@pytest.mark.parametrize("name", NAMES)
def test_record_and_config_round_trip(name):
    check_record(get_method(name))


@pytest.mark.parametrize("name", NAMES)
def test_run_on_the_simplex_and_resume_bitwise(kit, name, tmp_path):
    check_run_and_resume(kit, name, tmp_path, reference_steps=3)


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(
        tc.ConfigError, match=r"unknown method 'nope'; registered methods: .*tandem"
    ):
        get_method("nope")
    with pytest.raises(tc.ConfigError, match="unknown method 'nope'"):
        tc_train({"method": "nope"})


def tc_train(values):
    from tandem_core.run import TrainConfig

    return TrainConfig.from_mapping(values)


def test_keys_of_another_method_are_named():
    with pytest.raises(tc.ConfigError, match=r"eta_alpha is a key of method\(s\) \['tandem'\]"):
        tc_train({"method": "doremi", "eta_alpha": 1.0})
    with pytest.raises(tc.ConfigError, match="unknown training key"):
        tc_train({"method": "tandem", "no_such_key": 1})
    assert tc_train({"method": "tandem"}).replace(method="doremi").method == "doremi"


def test_values_are_checked_by_the_method(xp):
    del xp
    for values, message in [
        ({"floor": float("nan")}, "floor must be finite and >= 0"),
        ({"eta_alpha": 0}, "eta_alpha must be > 0 and finite"),
        ({"alpha_step": "adam"}, "alpha_step='adam' is not one of"),
        ({"episode": "total", "free_steps": 2}, "E must be >= K"),
        ({"method": "doremi", "eta_mixture": -1.0}, "eta_mixture must be > 0 and finite"),
        (
            {"method": "temperature", "temperature": float("inf")},
            "temperature must be > 0 and finite",
        ),
    ]:
        with pytest.raises(tc.ConfigError, match=message):
            tc_train(values)


class _EntryPoint:
    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"pkg:{name}", obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_broken_and_wrong_plugins_are_named(monkeypatch):
    import importlib.metadata

    eps = [_EntryPoint("broken", ImportError("no module x")), _EntryPoint("odd", object())]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
    methods.refresh_methods()
    try:
        with pytest.raises(tc.ConfigError, match=r"method 'broken' \(pkg:broken\) failed to load"):
            get_method("broken")
        with pytest.raises(tc.ConfigError, match="must be a tandem_core.methods.Method"):
            get_method("odd")
        with pytest.warns(RuntimeWarning, match="failed to load|must be a tandem_core"):
            assert all_methods() == []
    finally:
        monkeypatch.undo()
        methods.refresh_methods()


def test_signals_that_read_validation_batches():
    assert {s for s in Signal if s.needs_val} == {Signal.TWIN, Signal.ALIGNMENT}


def test_build_passes_run_facts_only_to_transforms_that_take_them():
    seen = []

    def old_style(params, *, sizes=None, history=0):
        seen.append(("old", history))
        return tc.uniform(history=history)

    def new_style(params, *, sizes=None, history=0, updates=None, num_domains=None):
        seen.append(("new", updates, num_domains))
        return tc.uniform(history=history)

    def open_style(params, **kw):
        seen.append(("open", sorted(kw)))
        return tc.uniform()

    base = get_method("uniform")
    for fn in (old_style, new_style, open_style):
        record = Method("x", Signal.NONE, base.params, fn, base.plan, "test")
        record.build(record.make_params(), history=3, num_domains=4, updates=7)
    assert seen == [
        ("old", 3),
        ("new", 7, 4),
        ("open", ["history", "num_domains", "sizes", "updates"]),
    ]


def test_tandem_budget_rule_and_tail_average_read_the_run():
    record = get_method("tandem")
    params = record.make_params({"eta_rule": "budget", "eta_alpha": 4.0, "average": "tail"})
    t = record.build(params, num_domains=5, updates=24)
    delta = np.array([1.0, -1.0, 0.0, 0.0, 0.0])
    state = t.update(t.init(5, xp=np, dtype=np.float64), delta)
    eta = tc.budget_step_size(4.0, 5, 24)  # 1.036: RMS-normalised Delta, EG, smoothing 1e-3
    g = (delta - delta.mean()) / np.sqrt(np.mean((delta - delta.mean()) ** 2))
    a = np.exp(-eta * g) / np.exp(-eta * g).sum()
    np.testing.assert_allclose(state.alpha, 0.999 * a + 1e-3 / 5, rtol=1e-6)
    for _ in range(11):
        state = t.update(state, delta)
    assert int(state.averaged) == 0  # the first 12 of 24 updates are the burn-in
    state = t.update(state, delta)
    assert int(state.averaged) == 1
    with pytest.raises(tc.ConfigError, match="needs the run's num_domains and updates"):
        record.transform(params)


def test_make_transform_is_the_run_s_transform():
    record = get_method("tandem")
    mine = record.make_transform(num_domains=3, steps=250)  # 10 episodes of K=5, E=20
    run = record.build(record.make_params(), num_domains=3, updates=10)
    delta = np.array([0.5, 0.0, -0.5])
    a, b = mine.init(3, xp=np, dtype=np.float64), run.init(3, xp=np, dtype=np.float64)
    for _ in range(10):
        a, b = mine.update(a, delta), run.update(b, delta)
    np.testing.assert_array_equal(a.alpha, b.alpha)
    assert int(a.averaged) == int(b.averaged) == 5  # the default output: the tail average
    assert tc.mixture_summary(a).trajectory.shape == (10, 3)  # every update kept, as a run does
    tuned = record.make_transform({"average": "all"}, num_domains=3, steps=250)
    state = tuned.init(3, xp=np, dtype=np.float64)
    for _ in range(10):
        state = tuned.update(state, delta)
    assert int(state.averaged) == 10
    with pytest.raises(tc.ConfigError, match="needs the run's num_domains and updates"):
        record.make_transform(num_domains=3)  # the tail needs the run's length


def test_tandem_rejects_unknown_rules():
    with pytest.raises(tc.ConfigError, match="eta_rule"):
        get_method("tandem").make_params({"eta_rule": "adaptive"})
    with pytest.raises(tc.ConfigError, match="average"):
        get_method("tandem").make_params({"average": "median"})
