"""The examples a user copies run as written, and the twin loops learn the mixture of `tandem
optimize` on the same suite and seed (`nox -s examples`; not in the default sessions)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.examples
ROOT = Path(__file__).resolve().parents[1]
STEPS = 100  # four episodes


def _python(*args, cwd=ROOT):
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _optimize(run_dir, *sets):
    args = ["-m", "tandem_adapters.cli", "optimize", "-q", "--set", f'run.run_dir="{run_dir}"']
    args += ["--set", f"train.steps={STEPS}"]
    for item in sets:
        args += ["--set", item]
    _python(*args)
    doc = json.loads((Path(run_dir) / "mixture.json").read_text())
    return np.array([doc["average"][d] for d in doc["domains"]]), doc["domains"]


def _loop(script, out, *extra):
    _python(ROOT / "examples" / script, "--steps", STEPS, "--out", out, *extra)
    doc = json.loads(Path(out).read_text())
    return np.array(doc["average"]), doc["domains"]


def test_torch_loop_learns_the_mixture_of_tandem_optimize(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    config = tmp_path / "gpt2"
    loop, domains = _loop("torch_loop.py", tmp_path / "loop.json", "--config-dir", config)
    cli, cli_domains = _optimize(tmp_path / "run", "model.kind=hf", f'model.hf_config="{config}"')
    assert list(domains) == list(cli_domains)
    np.testing.assert_allclose(loop, cli, atol=1e-5)
    assert not np.allclose(loop, 1 / len(domains))  # the mixture moved


def test_jax_loop_learns_the_mixture_of_tandem_optimize(tmp_path):
    pytest.importorskip("jax")
    loop, domains = _loop("jax_loop.py", tmp_path / "loop.json")
    cli, cli_domains = _optimize(tmp_path / "run", "run.backend=jax")
    assert list(domains) == list(cli_domains)
    np.testing.assert_allclose(loop, cli, atol=1e-5)


def test_hf_trainer_example_down_weights_noise(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("datasets")
    out = tmp_path / "mixture.json"
    _python(ROOT / "examples" / "hf_trainer.py", "--steps", STEPS, "--out", out)
    doc = json.loads(out.read_text())  # the run directory's format: weights by domain name
    assert doc["average"]["noise"] < 1 / len(doc["domains"])


@pytest.mark.parametrize("script, args", [("quickstart.py", ()), ("adapt_loop.py", ())])
def test_small_examples_run(script, args):
    pytest.importorskip("torch")
    assert "mixture" in _python(ROOT / "examples" / script, *args) or script == "adapt_loop.py"
