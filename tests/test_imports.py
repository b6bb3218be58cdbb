import subprocess
import sys

CODE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these now fails
import tandem_core as tc
import numpy as np
t = tc.tandem(eta_alpha=1.0)
s = t.update(t.init(3), np.array([0.1, 0.0, -0.1]))
assert abs(s.alpha.sum() - 1) < 1e-12
loaded = [m for m in ("torch", "jax", "equinox", "optax") if sys.modules.get(m) is not None]
print("LOADED", loaded)
"""


def _run(blocked):
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(blocked=blocked)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_core_imports_no_framework():
    assert "LOADED []" in _run([])


def test_core_works_with_frameworks_blocked():
    assert "LOADED []" in _run(["torch", "jax", "equinox", "optax"])
