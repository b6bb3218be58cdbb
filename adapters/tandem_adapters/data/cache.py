"""Tokenize text once: a disk cache of token arrays, memory-mapped on later runs.

Each text source (a file, or a ``save_to_disk`` dataset folder) becomes one entry: a 1-D
``.npy`` of token ids, exactly what ``streams.tokenize_documents`` gives for its documents, and
a JSON sidecar. The entry's name is a hash of everything the tokens depend on:

- the source's content (SHA-256 over its bytes, streamed in 1 MiB blocks: size and mtime are
  not enough, an edited file can keep both);
- the tokenizer: ``"byte"`` for ``ByteTokenizer``, the SHA-256 of its ``tokenizer.json`` for a
  ``FileTokenizer``, or a tokenizer object's own ``cache_identity`` string (without one, its
  text is not cached);
- the options: ``text_field``, the EOS id and the token dtype.

Both files are written with ``tandem_core.state.atomic_write``, the sidecar last: an entry
exists only when its sidecar does, so a killed or failed tokenization leaves none. Hashing runs
at well over 1 GB/s, far below the cost of tokenizing (``benchmarks/text_cache.py``).

Where: ``data.cache_dir``; ``"auto"`` is ``$TANDEM_CACHE`` if set, else
``~/.cache/tandem/tokens``; ``""`` or ``"none"`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem_core.state import atomic_write

from .corpus import DataError
from .formats import read_file
from .streams import tokenize_documents
from .text import batched, iter_documents, source_files, text_kind
from .tokenizer import ByteTokenizer, FileTokenizer

__all__ = [
    "CACHE_ENV",
    "DEFAULT_CACHE_DIR",
    "TokenCache",
    "content_hash",
    "make_cache",
    "read_part",
    "resolve_cache_dir",
    "tokenizer_identity",
]

CACHE_ENV = "TANDEM_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/tandem/tokens"
FORMAT = 1  # bump when the entry layout or the key changes: old entries are then ignored
_BLOCK = 1 << 20
_DOCS_PER_BATCH = 1024  # the same batch size as tokenize_documents' encode_batch calls
_OFF = ("", "none")


def resolve_cache_dir(setting: str | os.PathLike | None) -> Path | None:
    """The cache folder of a ``data.cache_dir`` value, or None when caching is off.

    Args:
        setting: ``"auto"`` (``$TANDEM_CACHE``, else ``~/.cache/tandem/tokens``), a path, or
            ``None`` / ``""`` / ``"none"`` (off).
    """
    if setting is None:
        return None
    value = str(setting)
    if value == "auto":
        value = os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
    if value.strip().lower() in _OFF:
        return None
    return Path(value).expanduser()


def _sha256_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def content_hash(path: Path) -> str:
    """Hex SHA-256 of a source's bytes (a folder: each file's relative name and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in source_files(path):
        if path.is_dir():  # a renamed shard is another dataset
            h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        _sha256_file(f, h)
    return h.hexdigest()


def tokenizer_identity(tokenizer: Any) -> str | None:
    """What names a tokenizer in cache keys; None for an object that gives no identity.

    ``"byte"`` for ``ByteTokenizer``, ``"sha256:<hex>"`` of a ``FileTokenizer``'s file, else
    the object's ``cache_identity`` attribute (a string) if it has one.
    """
    if isinstance(tokenizer, ByteTokenizer):
        return "byte"
    if isinstance(tokenizer, FileTokenizer):
        h = hashlib.sha256()
        _sha256_file(tokenizer.path, h)
        return f"sha256:{h.hexdigest()}"
    ident = getattr(tokenizer, "cache_identity", None)
    return ident if isinstance(ident, str) and ident else None


def token_dtype(vocab_size: int) -> np.dtype:
    """The dtype ``build_corpus`` gives tokenized text: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def entry_key(content: str, tokenizer_id: str, options: dict) -> str:
    """Hex name of a cache entry: a hash of the content hash, tokenizer identity and options."""
    doc = {"format": FORMAT, "content": content, "tokenizer": tokenizer_id, **options}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:40]


def _progress(enabled: bool, name: str) -> Any:
    """A tqdm bar counting tokens, shown after 2 s on a terminal only."""
    from tqdm.auto import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(desc=f"tokenizing {name}", unit="tok", unit_scale=True, delay=2.0,
                disable=not show, leave=False)  # fmt: skip


@dataclass(frozen=True)
class TokenCache:
    """A cache folder bound to one tokenizer and one set of options (see the module docstring).

    Attributes:
        root: the cache folder (created on the first write).
        tokenizer: the tokenizer used for misses.
        tokenizer_id: its identity in keys (``tokenizer_identity``).
        text_field: the JSON key / column of the documents.
        dtype: the token dtype of new entries.
        progress: show a progress bar while tokenizing (on a terminal only).
    """

    root: Path
    tokenizer: Any
    tokenizer_id: str
    text_field: str
    dtype: np.dtype
    progress: bool = False

    def options(self) -> dict:
        """Everything besides content and tokenizer that the tokens depend on."""
        eos = self.tokenizer.eos_id
        return {"text_field": self.text_field, "eos_id": eos, "dtype": self.dtype.str}

    def paths(self, key: str) -> tuple[Path, Path]:
        """``(tokens.npy, sidecar.json)`` of an entry."""
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def key(self, path: Path) -> str:
        """The entry name of a source's current content."""
        return entry_key(content_hash(path), self.tokenizer_id, self.options())

    def lookup(self, key: str) -> np.ndarray | None:
        """The entry's tokens ``(n,)`` memory-mapped, or None (absent, or not a whole entry)."""
        npy, meta = self.paths(key)
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            if info["tokens"] == 0:
                return np.zeros(0, dtype=self.dtype)  # an empty .npy cannot be mapped
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no entry, or a damaged one: tokenize again and overwrite it
        if arr.ndim != 1 or arr.shape[0] != info["tokens"] or arr.dtype != self.dtype:
            return None
        return arr

    def tokenize(self, path: Path) -> np.ndarray:
        """Tokens ``(n,)`` of every document of ``path`` joined with EOS (no cache involved)."""
        chunks = []
        with _progress(self.progress, Path(path).name) as bar:
            for docs in batched(iter_documents(path, self.text_field), _DOCS_PER_BATCH):
                chunks.append(tokenize_documents(docs, self.tokenizer, self.dtype))
                bar.update(chunks[-1].shape[0])
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=self.dtype)

    def store(self, key: str, tokens: np.ndarray, info: dict) -> None:
        """Write an entry: the tokens, then the sidecar that makes it visible."""
        npy, meta = self.paths(key)
        atomic_write(npy, lambda f: np.save(f, tokens, allow_pickle=False))
        doc = {"format": FORMAT, "tokens": int(tokens.shape[0]), "tokenizer": self.tokenizer_id}
        atomic_write(meta, json.dumps({**doc, **self.options(), **info}, indent=1) + "\n")

    def load(self, path: Path) -> tuple[np.ndarray, dict]:
        """Tokens of a source from the cache, tokenizing and storing them on a miss.

        Returns:
            ``(tokens (n,), report)``: ``report`` has ``cached`` (bool), ``tokens``,
            ``seconds`` (of tokenizing; 0 on a hit) and ``key``.
        """
        key = self.key(path)
        hit = self.lookup(key)
        if hit is not None:
            return hit, {"cached": True, "tokens": int(hit.shape[0]), "seconds": 0.0, "key": key}
        start = time.perf_counter()
        tokens = self.tokenize(path)
        seconds = time.perf_counter() - start
        self.store(key, tokens, {"source": str(path), "seconds": round(seconds, 3)})
        mapped = self.lookup(key)  # serve the mapped copy: the array in RAM can be freed
        tokens = tokens if mapped is None else mapped
        return tokens, {"cached": False, "tokens": int(tokens.shape[0]), "seconds": seconds,
                        "key": key}  # fmt: skip


def make_cache(
    cache_dir: str | os.PathLike | None,
    tokenizer: Any = None,
    *,
    text_field: str = "text",
    vocab_size: int | None = None,
    progress: bool = False,
) -> TokenCache | None:
    """A ``TokenCache`` for a ``data.cache_dir`` value; None: off, or no tokenizer identity.

    Args:
        cache_dir: see ``resolve_cache_dir``.
        tokenizer: None (``ByteTokenizer``) or a tokenizer object.
        text_field: the JSON key / column of the documents.
        vocab_size: an explicit vocabulary size (it decides the token dtype, as in
            ``build_corpus``); default the tokenizer's.
        progress: show a progress bar while tokenizing (on a terminal only).
    """
    root = resolve_cache_dir(cache_dir)
    tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
    ident = tokenizer_identity(tokenizer)
    if root is None or ident is None:
        return None
    dtype = token_dtype(vocab_size if vocab_size is not None else tokenizer.vocab_size)
    return TokenCache(root, tokenizer, ident, text_field, dtype, progress)


def read_part(path: Path, *, cache: TokenCache | None = None, **read: Any) -> Any:
    """``formats.read_file(path, **read)``, except that text comes from ``cache`` when given.

    Returns:
        The documents (``list[str]``) or a 1-D integer array (a memmap for token files and
        cached text).
    """
    path = Path(path)
    if cache is not None and text_kind(path) is not None:
        return cache.load(path)[0]
    if path.is_dir() and text_kind(path) is None:
        raise DataError(f"{path}: a folder, not a data file or a saved dataset")
    return read_file(path, **read)
