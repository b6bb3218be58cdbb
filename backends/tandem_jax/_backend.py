"""The JAX ``Backend``: ``jax.ops.segment_sum``, compiler-reduced collectives, immutable copies."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class JaxBackend:
    """JAX backend (CPU / GPU / TPU)."""

    name = "jax"
    xp = jnp
    TwinTrainer = None  # filled by the trainer module

    def segment_sum(self, data: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
        """``jax.ops.segment_sum``: ``data (B, ...)``, ``segment_ids (B,)`` -> ``(M, ...)``."""
        return jax.ops.segment_sum(data, segment_ids, num_segments=num_segments)

    def all_reduce_sum(self, x: jax.Array) -> jax.Array:
        """Identity: under ``jax.sharding`` the compiler inserts the reduction of sharded sums."""
        return x

    def copy_state(self, state: Any) -> Any:
        """A copy sharing no buffers (JAX arrays are immutable; the copy guards donated buffers)."""
        return jax.tree_util.tree_map(jnp.array, state)
