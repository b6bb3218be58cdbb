"""tandem_torch: the PyTorch backend of tandem (segment sums, collectives, twin trainer)."""

from ._backend import TorchBackend as TorchBackend
from .models import TinyGPT as TinyGPT
from .models import logits_and_hidden as logits_and_hidden
from .models import numpy_params as numpy_params
from .models import per_sample_loss as per_sample_loss
from .train_step import TwinTrainer as TwinTrainer

TorchBackend.TwinTrainer = TwinTrainer

__all__ = [
    "TinyGPT",
    "TorchBackend",
    "TwinTrainer",
    "logits_and_hidden",
    "numpy_params",
    "per_sample_loss",
]
