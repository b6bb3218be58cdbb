"""A third-party backend, registered by entry point under its own name, runs `tandem optimize`
end to end: the adapters reach it only through `tc.load_backend(name)`, never by name."""

import json
import subprocess
import sys

import pytest
from plugins import install, subprocess_env

PLUGIN = '''
"""A backend plugin that reuses the torch engine under its own name."""
from tandem_torch import TorchBackend


class PlugBackend(TorchBackend):
    name = "plug"
'''


def _optimize(env, run_dir, backend):
    sets = [
        f"run.backend={backend}",
        f'run.run_dir="{run_dir}"',
        "train.steps=20",
        "train.batch_per_domain=4",
        "model.d_model=16",
        "model.n_layer=1",
        "backend.threads=1",
    ]
    cmd = [sys.executable, "-m", "tandem_adapters.cli", "optimize", "-q"]
    cmd += [a for s in sets for a in ("--set", s)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def test_plugin_backend_runs_optimize_like_the_engine_it_reuses(tmp_path):
    pytest.importorskip("torch")
    root = tmp_path / "site"
    (root / "tandem_plug").mkdir(parents=True)
    (root / "tandem_plug" / "__init__.py").write_text(PLUGIN)
    install(root, "tandem-plug", {"tandem.backends": {"plug": "tandem_plug:PlugBackend"}})
    env = subprocess_env(root)
    proc = _optimize(env, tmp_path / "plug", "plug")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend=plug" in proc.stdout
    plug = json.loads((tmp_path / "plug" / "mixture.json").read_text())
    assert plug["backend"] == "plug"
    assert _optimize(env, tmp_path / "torch", "torch").returncode == 0
    torch = json.loads((tmp_path / "torch" / "mixture.json").read_text())
    assert plug["average"] == torch["average"] and plug["trajectory"] == torch["trajectory"]
    unknown = _optimize(env, tmp_path / "x", "nothere")
    assert unknown.returncode == 2 and "unknown backend 'nothere'" in unknown.stderr
    assert "plug" in unknown.stderr  # the message lists the installed backends
