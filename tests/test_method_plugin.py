"""A new method as ONE file (examples/method_plugin/lossmix.py), registered by entry point like a
third party's package, runs through the Python API and the CLI on every installed backend and keeps
the shared invariants; nothing else in the repository names it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from method_checks import check_record, check_run_and_resume, check_transform, run_method
from plugins import install, subprocess_env

from tandem_core import methods

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "method_plugin" / "lossmix.py"


@pytest.fixture
def lossmix(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    shutil.copy(EXAMPLE, root / "lossmix.py")
    install(root, "lossmix", {"tandem.methods": {"lossmix": "lossmix:METHOD"}})
    monkeypatch.syspath_prepend(str(root))
    methods.refresh_methods()
    yield root
    methods.refresh_methods()
    sys.modules.pop("lossmix", None)


def test_the_method_is_one_short_file():
    assert len(EXAMPLE.read_text().splitlines()) <= 150


def test_registered_and_invariant(lossmix, xp):
    assert "lossmix" in methods.available_methods()
    method = methods.get_method("lossmix")
    check_record(method)
    check_transform(method, xp)


def test_api_run_up_weights_the_hardest_domain_and_resumes(lossmix, kit, tmp_path):
    result = run_method(kit, "lossmix", steps=30, eta=1.0).run(progress=False)
    noise = result.domains.index("noise")  # uniform tokens: the highest loss of the toy domains
    assert result.last[noise] == result.last.max() and result.last[noise] > 1 / 3
    check_run_and_resume(kit, "lossmix", tmp_path, eta=1.0)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_cli_finds_the_plugin(lossmix, tmp_path, backend):
    pytest.importorskip(backend)
    run_dir = tmp_path / "run"
    sets = [
        "train.method=lossmix",
        "train.eta=0.8",
        "train.steps=12",
        "train.batch_per_domain=4",
        "model.d_model=16",
        "model.n_layer=1",
        f"run.backend={backend}",
        f'run.run_dir="{run_dir}"',
    ]
    cmd = [sys.executable, "-m", "tandem_adapters.cli", "optimize", "-q"]
    cmd += [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, env=subprocess_env(lossmix), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((run_dir / "mixture.json").read_text())
    assert doc["method"] == "lossmix" and doc["steps"] == 12
    weights = np.array(list(doc["average"].values()))
    assert abs(weights.sum() - 1) < 1e-6 and doc["average"]["noise"] > 0.2
    bad = subprocess.run(
        [*cmd, "--set", "train.eta=-1"],  # the method's own validation: exit 2, nothing written
        env=subprocess_env(lossmix),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "eta must be > 0 and finite" in bad.stderr
    assert json.loads((run_dir / "mixture.json").read_text()) == doc
