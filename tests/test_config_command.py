"""`tandem config`: the resolved configuration as TOML, every key with its default and help."""

import re

import pytest
import tomllib
from utils import a_backend, installed_backends

from tandem_adapters.cli import main
from tandem_adapters.config import JobConfig
from tandem_core.methods import all_methods


def _config(capsys, *sets):
    """``tandem config`` on an installed backend (its [backend] table needs its framework)."""
    sets = (f"run.backend={a_backend()}", *sets)
    assert main(["config", *[a for s in sets for a in ("--set", s)]]) == 0
    return capsys.readouterr().out


def test_output_is_the_resolved_config_as_toml(capsys):
    out = _config(capsys, "train.lr=0.1")
    overrides = [f"run.backend={a_backend()}", "train.lr=0.1"]
    assert tomllib.loads(out) == JobConfig.load(overrides=overrides).to_mapping()
    assert re.search(r"^lr = 0\.1  # .+ \(default 0\.003\)$", out, re.M)


@pytest.mark.parametrize("method", [m.name for m in all_methods()])
def test_every_key_has_a_help_comment(capsys, method):
    out = _config(capsys, f"train.method={method}")
    keys = [line for line in out.splitlines() if re.match(r"^(# )?\w+ = ", line)]
    assert keys
    for line in keys:
        assert re.search(r"  # \S.* \(default .+\)$", line), f"no help: {line}"
        assert not re.search(r"  # \(default", line), f"empty help: {line}"


@pytest.mark.skipif(not {"torch", "jax"} <= set(installed_backends()), reason="torch and jax")
def test_method_and_backend_switch_show_their_keys(capsys):
    tandem = tomllib.loads(_config(capsys, "run.backend=torch"))
    doge = tomllib.loads(_config(capsys, "train.method=doge", "run.backend=jax"))
    assert "probe_steps" in tandem["train"] and "probe_steps" not in doge["train"]
    assert "eta_mixture" in doge["train"]
    assert "threads" in tandem["backend"] and "devices" in doge["backend"]
