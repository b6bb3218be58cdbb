"""tandem_jax: the JAX backend of tandem (segment sums, shardings, twin trainer)."""

from ._backend import JaxBackend as JaxBackend

__all__ = ["JaxBackend"]
