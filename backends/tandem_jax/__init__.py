"""tandem_jax: the JAX backend of tandem (segment sums, shardings, twin trainer)."""

from ._backend import JaxBackend as JaxBackend
from .models import TinyGPT as TinyGPT
from .models import per_sample_loss as per_sample_loss
from .models import to_numpy as to_numpy
from .train_step import TwinTrainer as TwinTrainer

JaxBackend.TwinTrainer = TwinTrainer

__all__ = ["JaxBackend", "TinyGPT", "TwinTrainer", "per_sample_loss", "to_numpy"]
