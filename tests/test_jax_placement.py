"""Where the JAX engine puts arrays (``tandem_jax.placement``): one device, or a data mesh.

Two processes sharing one mesh are tested end to end in ``test_multinode.py``.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")


def test_one_device_placement():
    import jax

    from tandem_core import ConfigError
    from tandem_jax.placement import Placement, mesh_devices

    place = Placement(None)
    assert (place.mesh, place.size, place.processes) == (None, 1, 1)
    assert place.local_rows(7) == slice(0, 7)
    batch = place.batch({"tokens": np.arange(6).reshape(3, 2)})
    assert isinstance(batch["tokens"], jax.Array) and batch["tokens"].shape == (3, 2)
    on = jax.device_put(np.ones(2))
    tree = place.replicate({"a": np.zeros(3), "b": on})
    assert isinstance(tree["a"], jax.Array) and tree["b"] is on  # device arrays stay
    assert mesh_devices(1) == [jax.devices()[0]]
    with pytest.raises(ConfigError, match="backend.devices=99 but JAX sees"):
        mesh_devices(99)


SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from tandem_core import ConfigError
    from tandem_jax.placement import Placement, mesh_devices
    place = Placement(mesh_devices(4))
    assert place.size == 4 and place.processes == 1 and place.local_rows(8) == slice(0, 8)
    w = jax.numpy.ones(2)  # a device array on one device
    with jax.transfer_guard("disallow"):  # explicit placements only
        batch = place.batch({"tokens": np.arange(16).reshape(8, 2)})
        state = place.replicate({"alpha": np.full(3, 1 / 3), "w": w})
    shards = sorted(s.data.shape for s in batch["tokens"].addressable_shards)
    assert shards == [(2, 2)] * 4, shards
    assert state["alpha"].sharding.is_fully_replicated and state["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.arange(16).reshape(8, 2))
    try:
        place.batch({"tokens": np.zeros((6, 2))})
    except ConfigError as err:
        assert "6 rows" in str(err) and "4 devices" in str(err), err
    else:
        raise AssertionError("an uneven batch was placed")
    print("OK")
    """
)


@pytest.mark.dist
def test_mesh_placement_on_four_devices():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
