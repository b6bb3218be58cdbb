"""The JAX ``TrainingBackend``: segment sums, options, models, the engine, timing and memory.

Arrays: ``jax.ops.segment_sum``, compiler-reduced collectives, immutable copies. Jobs: the
``[backend]`` table (``JaxOptions``), one process per host (``jax.distributed`` when asked), the
tiny GPT or a user's equinox model, and the ``JaxEngine`` over a ``data`` mesh of devices.
"""

from __future__ import annotations

import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from tandem_core import ConfigError
from tandem_core.run.gpt import init_gpt_params
from tandem_core.run.model import factory_kwargs, load_factory

from .engine import JaxEngine
from .models import TinyGPT
from .modules import ModelView, check_equinox
from .options import JaxOptions
from .placement import mesh_devices

__all__ = ["JaxBackend"]


class JaxBackend:
    """JAX backend (CPU / GPU / TPU)."""

    name = "jax"
    xp = jnp
    Options = JaxOptions

    # ------------------------------------------------------------------ arrays
    def segment_sum(self, data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
        """``jax.ops.segment_sum``: ``data (B, ...)``, ``segment_ids (B,)`` -> ``(M, ...)``."""
        return jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)

    def all_reduce_sum(self, x: jax.Array) -> jax.Array:
        """Identity: under ``jax.sharding`` the compiler inserts the reduction of sharded sums."""
        return x

    def copy_state(self, state: Any) -> Any:
        """A copy sharing no buffers (JAX arrays are immutable; the copy guards donated buffers)."""
        return jax.tree_util.tree_map(jnp.array, state)

    # ------------------------------------------------------------------ processes
    def setup(self, options: JaxOptions) -> None:
        """Deterministic GPU kernels; the multi-host runtime once when ``options.distributed``."""
        if options.deterministic:
            deterministic_kernels()
        join_cluster(options)

    def rank(self, options: JaxOptions) -> int:
        """``jax.process_index()`` in a multi-host run, else 0."""
        if not options.distributed:
            return 0
        join_cluster(options)  # a job asks its rank before setup: process_index would start JAX
        return jax.process_index()

    def launch(self, argv: list[str], options: JaxOptions, *, run_dir: str = "") -> None:
        """``None``: JAX runs one process per host, started by the user or the cluster."""
        del argv, options, run_dir

    # ------------------------------------------------------------------ models
    def build_model(self, spec: Any, *, vocab_size: int, seq_len: int) -> eqx.Module:
        """The ``ModelSpec``'s proxy as an equinox module (a factory's model is checked).

        Raises:
            ConfigError: ``kind="hf"`` (torch modules), or a factory model that fails its check.
        """
        if spec.kind == "tiny_gpt":
            cfg = spec.gpt(vocab_size, seq_len)
            return TinyGPT.create(cfg, init_gpt_params(cfg, spec.seed))
        if spec.kind == "hf":
            raise ConfigError(
                "model.kind='hf' runs on backends with torch modules (run.backend='torch'); "
                "use tiny_gpt or module with JAX"
            )
        factory = load_factory(spec.module)
        model = factory(**factory_kwargs(factory, spec, vocab_size, seq_len))
        return check_equinox(model, spec.module, vocab_size, seq_len)

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is an equinox module."""
        return isinstance(model, eqx.Module)

    def model_adapter(self, model: Any) -> ModelView:
        """``model`` as ``per_sample_loss(batch)`` / ``hidden_states(batch)``.

        Raises:
            ConfigError: ``model`` is not an equinox module.
        """
        if not self.owns(model):
            raise ConfigError(
                f"{type(model).__name__} is not a model of backend jax: expected an equinox.Module"
            )
        return ModelView(model)

    def make_engine(
        self,
        model: eqx.Module,
        config: Any,
        *,
        num_domains: int,
        num_val_domains: int,
        options: JaxOptions,
    ) -> JaxEngine:
        """A ``JaxEngine`` over the first ``options.devices`` devices of every process.

        One process: its first ``options.devices`` devices (one, no mesh, if <= 1). A job of
        several processes (``jax.distributed``): one ``data`` mesh over the first
        ``max(options.devices, 1)`` devices of each process; each process then computes on its
        own rows of every batch (docs/distributed.md).

        Raises:
            ConfigError: more devices asked than a process sees, or ``dtype="float64"`` without
                x64.
        """
        devices = None
        if jax.process_count() > 1 or options.devices > 1:
            devices = mesh_devices(max(options.devices, 1))
        return JaxEngine(
            model,
            config,
            num_domains,
            num_val_domains=num_val_domains,
            options=options,
            devices=devices,
        )

    # ------------------------------------------------------------------ measurement
    def block(self, tree: Any) -> None:
        """``jax.block_until_ready``: wait for the device work producing ``tree``."""
        jax.block_until_ready(tree)

    def peak_memory_mib(self) -> float | None:
        """Peak bytes in use on the first device, in MiB (``None``: not reported, e.g. CPU)."""
        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
        return None

    def info(self) -> dict[str, str]:
        """Versions of jax, jaxlib, equinox and optax, and the non-CPU device kinds."""
        import jaxlib
        import optax

        kinds = sorted({d.device_kind for d in jax.devices() if d.platform != "cpu"})
        return {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "equinox": eqx.__version__,
            "optax": optax.__version__,
            "accelerator": ", ".join(kinds),
        }


def join_cluster(options: JaxOptions) -> None:
    """``jax.distributed.initialize`` once when ``options.distributed``, before JAX starts."""
    if options.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize(**options.cluster())


def deterministic_kernels() -> None:
    """Ask XLA for deterministic GPU kernels (``backend.deterministic``, docs/reliability.md).

    The flag is read when JAX starts its backends, so it is added to ``XLA_FLAGS`` only before
    that (a job calls ``setup`` before it touches a device); on CPU, XLA's kernels are
    deterministic already and the flag changes nothing.
    """
    from jax._src import xla_bridge

    flag = "--xla_gpu_deterministic_ops=true"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags and not xla_bridge.backends_are_initialized():
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
