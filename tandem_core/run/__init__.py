"""tandem_core.run: the host side of a run, still framework-free.

The run loop (``MixtureRun``) drives a backend's ``Engine`` through a method's ``Plan``; the
``[train]`` table is ``TrainConfig``, the ``[model]`` table ``ModelSpec`` (with the built-in GPT's
specification in ``gpt``), and per-sample weighting (ADAPT) is ``weighting``. The pure math is
``tandem_core``'s top level; methods are records in ``tandem_core.methods``.
"""

from ..errors import ConfigError as ConfigError
from ..errors import NonFiniteError as NonFiniteError
from .config import TrainConfig as TrainConfig
from .engine import Engine as Engine
from .gpt import GPTConfig as GPTConfig
from .gpt import init_gpt_params as init_gpt_params
from .loop import MixtureRun as MixtureRun
from .model import ModelSpec as ModelSpec
from .report import RunResult as RunResult
from .weighting import AdaptConfig as AdaptConfig
from .weighting import SampleWeighting as SampleWeighting
from .weighting import check_weighting as check_weighting

__all__ = [
    "AdaptConfig",
    "ConfigError",
    "Engine",
    "GPTConfig",
    "ModelSpec",
    "MixtureRun",
    "NonFiniteError",
    "RunResult",
    "SampleWeighting",
    "TrainConfig",
    "check_weighting",
    "init_gpt_params",
]
