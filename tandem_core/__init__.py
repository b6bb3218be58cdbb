"""tandem_core: the backend-agnostic functional core of tandem (online data-mixture optimisation).

Pure functions over the Array API (numpy, torch, jax, ...); never imports torch or jax.

>>> import numpy as np, tandem_core as tc
>>> transform = tc.tandem(eta_alpha=1.0)
>>> state = transform.init(3)
>>> stats = tc.TwinStats(
...     proxy=tc.domain_stats(np.array([2.0, 2.0, 2.0]), np.array([0, 1, 2]), 3),
...     reference=tc.domain_stats(np.array([1.9, 2.0, 2.1]), np.array([0, 1, 2]), 3),
... )
>>> transform.update(state, stats).alpha.round(4).tolist()
[0.4333, 0.3333, 0.2333]
"""

from ._utils import tree_map as tree_map
from .accounting import MISSING_POLICIES as MISSING_POLICIES
from .accounting import DomainStats as DomainStats
from .accounting import TwinStats as TwinStats
from .accounting import all_reduce_stats as all_reduce_stats
from .accounting import domain_means as domain_means
from .accounting import domain_stats as domain_stats
from .accounting import excess_loss_stats as excess_loss_stats
from .accounting import fill_missing as fill_missing
from .accounting import merge_stats as merge_stats
from .accounting import pack_stats as pack_stats
from .accounting import segment_sum_onehot as segment_sum_onehot
from .accounting import stats_to_numpy as stats_to_numpy
from .accounting import twin_delta as twin_delta
from .accounting import unpack_stats as unpack_stats
from .accounting import weighted_objective as weighted_objective
from .adapt import AdaptState as AdaptState
from .adapt import AdaptTransform as AdaptTransform
from .adapt import AnchorSum as AnchorSum
from .adapt import WeightedStepInfo as WeightedStepInfo
from .adapt import WeightSummary as WeightSummary
from .adapt import adapt as adapt
from .adapt import adapt_scores as adapt_scores
from .adapt import adapt_weights as adapt_weights
from .adapt import anchor_centroid as anchor_centroid
from .adapt import anchor_sum as anchor_sum
from .adapt import bm25_scores as bm25_scores
from .adapt import bm25_term_weights as bm25_term_weights
from .adapt import centroid_from_sum as centroid_from_sum
from .adapt import input_mask as input_mask
from .adapt import l2_normalize as l2_normalize
from .adapt import merge_anchor_sums as merge_anchor_sums
from .adapt import merge_step_info as merge_step_info
from .adapt import pool_hidden as pool_hidden
from .adapt import position_weights as position_weights
from .adapt import standardize as standardize
from .adapt import weight_summary as weight_summary
from .adapt import weighted_loss as weighted_loss
from .backend import Backend as Backend
from .backend import NumpyBackend as NumpyBackend
from .backend import available_backends as available_backends
from .backend import load_backend as load_backend
from .data import IGNORE_INDEX as IGNORE_INDEX
from .data import BatchSampler as BatchSampler
from .data import check_batch as check_batch
from .data import scored_counts as scored_counts
from .data import split_rows as split_rows
from .errors import ConfigError as ConfigError
from .errors import NonFiniteError as NonFiniteError
from .mixture import AlignmentStats as AlignmentStats
from .mixture import MixtureState as MixtureState
from .mixture import MixtureSummary as MixtureSummary
from .mixture import MixtureTransform as MixtureTransform
from .mixture import check_mixture as check_mixture
from .mixture import doge as doge
from .mixture import doremi as doremi
from .mixture import mixture_summary as mixture_summary
from .mixture import mixture_transform as mixture_transform
from .mixture import natural as natural
from .mixture import tandem as tandem
from .mixture import temperature as temperature
from .mixture import uniform as uniform
from .schedule import Phase as Phase
from .schedule import Schedule as Schedule
from .schedule import budget_step_size as budget_step_size
from .schedule import episode as episode
from .schedule import phase as phase
from .schedule import phase_code as phase_code
from .simplex import eg_step as eg_step
from .simplex import project_simplex as project_simplex
from .simplex import running_mean as running_mean
from .simplex import smooth as smooth
from .simplex import time_average as time_average
from .stages import Stage as Stage
from .stages import chain as chain
from .stages import exponentiated_gradient as exponentiated_gradient
from .stages import gradient_descent as gradient_descent
from .stages import identity as identity
from .stages import scale_by_rms as scale_by_rms
from .stages import simplex_projection as simplex_projection
from .stages import smoothing as smoothing
from .state import CorruptStateError as CorruptStateError
from .state import load_state as load_state
from .state import read_metadata as read_metadata
from .state import save_state as save_state
from .taskpgm import AFFINITY_KINDS as AFFINITY_KINDS
from .taskpgm import SOLVER_METHODS as SOLVER_METHODS
from .taskpgm import UTILITY_KINDS as UTILITY_KINDS
from .taskpgm import PairwiseJSD as PairwiseJSD
from .taskpgm import TaskPGMResult as TaskPGMResult
from .taskpgm import affinity as affinity
from .taskpgm import default_mu as default_mu
from .taskpgm import energy as energy
from .taskpgm import greedy_subset as greedy_subset
from .taskpgm import interaction_matrix as interaction_matrix
from .taskpgm import jensen_shannon as jensen_shannon
from .taskpgm import jsd_init as jsd_init
from .taskpgm import jsd_result as jsd_result
from .taskpgm import jsd_update as jsd_update
from .taskpgm import kkt_residual as kkt_residual
from .taskpgm import pmi_affinity as pmi_affinity
from .taskpgm import solve_mixture as solve_mixture
from .taskpgm import subset_mixture as subset_mixture
from .taskpgm import taskpgm_mixture as taskpgm_mixture
from .taskpgm import unary_utility as unary_utility

__version__ = "0.1.0"
