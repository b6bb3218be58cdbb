"""Data sources for tandem: tokenizers, readers, the ``TokenSampler`` and synthetic suites.

Every source becomes a ``DomainCorpus`` (one token stream per domain); ``TokenSampler`` turns
it into the seeded, resumable ``tandem_core.BatchSampler`` the trainers consume.

>>> from tandem_adapters.data import TokenSampler, make_suite
>>> sampler = TokenSampler(make_suite("planted", seed=0), seq_len=16, seed=0)
>>> sampler.train_batch(per_domain=2)["tokens"].shape
(10, 16)
"""

from .arrays import from_arrays as from_arrays
from .corpus import DataError as DataError
from .corpus import DomainCorpus as DomainCorpus
from .formats import BIN_DTYPES as BIN_DTYPES
from .formats import SUFFIXES as SUFFIXES
from .hf import load_hf_dataset as load_hf_dataset
from .readers import load_folder as load_folder
from .sampler import TokenSampler as TokenSampler
from .synthetic import available_suites as available_suites
from .synthetic import make_suite as make_suite
from .tokenizer import ByteTokenizer as ByteTokenizer
from .tokenizer import FileTokenizer as FileTokenizer
from .tokenizer import Tokenizer as Tokenizer
from .tokenizer import load_tokenizer as load_tokenizer

__all__ = [
    "BIN_DTYPES",
    "SUFFIXES",
    "ByteTokenizer",
    "DataError",
    "DomainCorpus",
    "FileTokenizer",
    "TokenSampler",
    "Tokenizer",
    "available_suites",
    "from_arrays",
    "load_folder",
    "load_hf_dataset",
    "load_tokenizer",
    "make_suite",
]
