"""tandem_torch: the PyTorch backend of tandem.

``Twins`` are the twin networks for your own training loop; ``TorchEngine`` drives them for
``tandem_core.run.MixtureRun``; ``TorchBackend`` is what ``tandem_core.load_backend("torch")``
returns (options, process setup, models, the engine).
"""

from ._backend import TorchBackend as TorchBackend
from .batches import segment_sum as segment_sum
from .engine import TorchEngine as TorchEngine
from .models import TinyGPT as TinyGPT
from .models import logits_and_hidden as logits_and_hidden
from .models import numpy_params as numpy_params
from .models import per_sample_loss as per_sample_loss
from .options import TorchOptions as TorchOptions
from .twins import Twins as Twins

__all__ = [
    "TinyGPT",
    "TorchBackend",
    "TorchEngine",
    "TorchOptions",
    "Twins",
    "logits_and_hidden",
    "numpy_params",
    "per_sample_loss",
    "segment_sum",
]


def __getattr__(name: str):
    """``TandemTrainer`` and ``DatasetSampler`` on first use: transformers stays optional."""
    if name in ("TandemTrainer", "DatasetSampler"):
        from . import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
