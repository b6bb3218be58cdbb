"""The torch ``TrainingBackend``: arrays, process setup and launch, models, the engine, facts.

Everything framework-specific a job needs comes from here, so the jobs never branch on the
backend's name (docs/architecture.md, "How to add a backend").
"""

from __future__ import annotations

import copy
import os
from typing import Any

import array_api_compat.torch as xp_torch
import torch
from torch import nn

from tandem_core.methods import Signal

from .batches import segment_sum
from .distributed import all_reduce_sum, default_device, init_from_env
from .options import TorchOptions

__all__ = ["TorchBackend"]


class TorchBackend:
    """PyTorch backend (CPU / CUDA; gloo or NCCL when ``torch.distributed`` is initialised)."""

    name = "torch"
    xp = xp_torch
    Options = TorchOptions

    # ------------------------------------------------------------------ arrays
    def segment_sum(
        self, data: torch.Tensor, segment_ids: torch.Tensor, num_segments: int
    ) -> torch.Tensor:
        """``index_add`` segment sum: ``data (B, ...)``, ``segment_ids (B,)`` -> ``(M, ...)``."""
        return segment_sum(data, segment_ids, num_segments)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks when ``torch.distributed`` is initialised, else identity."""
        return all_reduce_sum(x)

    def copy_state(self, state: Any) -> Any:
        """Deep copy sharing no storage: parameters and optimizer state, for twin sync."""
        return copy.deepcopy(state)

    # ------------------------------------------------------------------ processes
    def setup(self, options: TorchOptions) -> None:
        """Threads, deterministic kernels, and the process group under ``torchrun``."""
        if options.threads > 0:
            torch.set_num_threads(options.threads)
        deterministic_kernels(options.deterministic)
        device = default_device(options.device)
        if device.type == "cuda" and device.index is not None and "WORLD_SIZE" in os.environ:
            torch.cuda.set_device(device)  # NCCL: one GPU per rank
        init_from_env(device)

    def rank(self, options: TorchOptions) -> int:
        """This process's rank (``RANK`` of ``torchrun``; 0 on one process)."""
        del options
        return int(os.environ.get("RANK", "0"))

    def launch(self, argv: list[str], options: TorchOptions, *, run_dir: str) -> int | None:
        """Re-run ``tandem argv`` under ``torchrun`` with ``backend.nproc`` processes.

        Returns:
            Their exit status, or ``None`` when this process runs the job (one process, or
            already a torchrun worker).
        """
        from .launch import launch

        return launch(argv, options.nproc, run_dir=run_dir)

    # ------------------------------------------------------------------ models
    def build_model(self, spec: Any, *, vocab_size: int, seq_len: int) -> nn.Module:
        """The proxy of the ``ModelSpec`` (tiny GPT, Hugging Face, or a factory), checked."""
        from .build import build_model

        return build_model(spec, vocab_size=vocab_size, seq_len=seq_len)

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is a torch ``nn.Module``."""
        return isinstance(model, nn.Module)

    def model_adapter(self, model: nn.Module) -> Any:
        """``model`` as ``per_sample_loss(batch)`` / ``hidden_states(batch)``."""
        from .view import TorchModelView

        return TorchModelView(model)

    def make_engine(
        self,
        model: nn.Module,
        config: Any,
        *,
        num_domains: int,
        num_val_domains: int,
        options: TorchOptions,
    ) -> Any:
        """The ``TorchEngine`` training ``model`` under ``config``.

        A run that vmaps over the model (``backend.fuse_twins``, or the alignment signal's
        per-domain gradients) gets eager attention in a Hugging Face model, and is refused for a
        model with active dropout (random operations under vmap) here rather than deep inside
        the first step.
        """
        from .build import refuse_dropout_under_vmap
        from .engine import TorchEngine
        from .hf import is_hf_model, prepare_for_training

        vmapped = options.fuse_twins or config.method_record.signal is Signal.ALIGNMENT
        if is_hf_model(model):
            model = prepare_for_training(model, vmapped=vmapped)
        if vmapped:
            refuse_dropout_under_vmap(model)
        return TorchEngine(
            model, config, num_domains, num_val_domains=num_val_domains, options=options
        )

    # ------------------------------------------------------------------ facts
    def block(self, tree: Any) -> None:
        """Wait for queued CUDA work (timing); a no-op on CPU, where torch is eager."""
        del tree
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def peak_memory_mib(self) -> float | None:
        """Peak CUDA memory allocated by this process in MiB (``None`` without CUDA)."""
        if not torch.cuda.is_available():
            return None
        return torch.cuda.max_memory_allocated() / 2**20

    def info(self) -> dict[str, str]:
        """Torch's version, its threads, and the CUDA device's name (``""`` on CPU)."""
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        return {
            "torch": torch.__version__,
            "torch threads": str(torch.get_num_threads()),
            "accelerator": gpu,
        }


def deterministic_kernels(on: bool) -> None:
    """Deterministic torch kernels in this process (``backend.deterministic``; reliability.md).

    ``torch.use_deterministic_algorithms`` picks the deterministic CPU and CUDA implementations
    (index_add / scatter_add sums, embedding backward), cuDNN's autotuner stays off, and cuBLAS
    gets the fixed workspace it needs (``CUBLAS_WORKSPACE_CONFIG``, read when CUDA starts). An op
    with no deterministic implementation warns (``warn_only``) instead of stopping the run.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
