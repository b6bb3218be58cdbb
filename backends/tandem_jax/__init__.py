"""tandem_jax: the JAX backend of tandem (twins as pure jitted functions, the engine, models).

``make_twins`` / ``sync`` / ``probe`` / ``step`` / ``stats`` / ``distance`` train a pair of twins
in a user's own loop; ``JaxEngine`` drives them for ``tandem_core.run.MixtureRun``; ``JaxBackend``
is the ``tandem.backends`` entry point.
"""

from ._backend import JaxBackend as JaxBackend
from ._ops import segment_sum as segment_sum
from .engine import JaxEngine as JaxEngine
from .models import TinyGPT as TinyGPT
from .models import per_sample_loss as per_sample_loss
from .models import to_numpy as to_numpy
from .options import JaxOptions as JaxOptions
from .twins import Twins as Twins
from .twins import TwinSpec as TwinSpec
from .twins import distance as distance
from .twins import loss as loss
from .twins import make_twins as make_twins
from .twins import probe as probe
from .twins import proxy_model as proxy_model
from .twins import stats as stats
from .twins import step as step
from .twins import sync as sync

__all__ = [
    "JaxBackend",
    "JaxEngine",
    "JaxOptions",
    "TinyGPT",
    "TwinSpec",
    "Twins",
    "distance",
    "loss",
    "make_twins",
    "per_sample_loss",
    "probe",
    "proxy_model",
    "segment_sum",
    "stats",
    "step",
    "sync",
    "to_numpy",
]
