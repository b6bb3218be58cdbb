"""tandem_torch: the PyTorch backend of tandem (segment sums, collectives, twin trainer)."""

from ._backend import TorchBackend as TorchBackend

__all__ = ["TorchBackend"]
