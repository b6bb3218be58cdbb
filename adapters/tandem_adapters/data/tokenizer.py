"""Tokenizers for text data: byte-level by default, or a local ``tokenizer.json`` (no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from .corpus import DataError

__all__ = ["ByteTokenizer", "FileTokenizer", "Tokenizer", "load_tokenizer"]

# Tried in order when a tokenizer file does not name its end-of-document token explicitly.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "[EOS]", "<|end_of_text|>", "[SEP]")


@runtime_checkable
class Tokenizer(Protocol):
    """What the readers need from a tokenizer."""

    vocab_size: int  # ids are in [0, vocab_size)
    eos_id: int | None  # appended after every document; None joins documents directly

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255, plus the end-of-document id 256 when ``add_eos``.

    Args:
        add_eos: reserve id 256 as ``eos_id`` (``vocab_size`` 257); else ``vocab_size`` 256.

    Examples:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé"), tok.vocab_size, tok.eos_id
        ([104, 195, 169], 257, 256)
        >>> tok.decode(tok.encode("hé") + [256])
        'hé'
    """

    def __init__(self, *, add_eos: bool = True) -> None:
        self.eos_id = 256 if add_eos else None
        self.vocab_size = 257 if add_eos else 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as a list of ints in ``[0, 256)``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Inverse of ``encode``; ids >= 256 (EOS) are dropped, invalid UTF-8 is replaced."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class FileTokenizer:
    """A ``tokenizers.Tokenizer`` read from a local ``tokenizer.json`` (Hugging Face fast format).

    Args:
        path: the ``tokenizer.json`` file.
        eos_token: the end-of-document token; if None, the first of ``EOS_CANDIDATES`` in the
            vocabulary is used, and documents are joined without separator if none is.
    """

    def __init__(self, path: str | Path, *, eos_token: str | None = None) -> None:
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError as err:  # optional dependency: only needed for tokenizer files
            raise ImportError(
                "reading a tokenizer.json needs the `tokenizers` package: "
                "pip install 'tandem-mixture[hf]'"
            ) from err
        self.path = Path(path)
        try:
            self._tok = _HFTokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise DataError(f"{self.path}: not a valid tokenizer.json ({err})") from err
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        names = (eos_token,) if eos_token is not None else EOS_CANDIDATES
        ids = [self._tok.token_to_id(name) for name in names]
        found = [i for i in ids if i is not None]
        if eos_token is not None and not found:
            raise DataError(f"{self.path}: eos_token {eos_token!r} is not in the vocabulary")
        self.eos_id = found[0] if found else None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text, tokenized in parallel by the Rust library."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens skipped)."""
        return self._tok.decode(ids)

    def __repr__(self) -> str:
        return f"FileTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(
    path: str | Path | None = None, *, eos_token: str | None = None
) -> ByteTokenizer | FileTokenizer:
    """The byte tokenizer for ``None``, else the local ``tokenizer.json`` at ``path``.

    Args:
        path: None, a ``tokenizer.json`` file, or a directory holding one (e.g. a saved
            Hugging Face tokenizer). Nothing is ever downloaded.
        eos_token: end-of-document token name for file tokenizers (see ``FileTokenizer``).

    Returns:
        A tokenizer with ``encode(text) -> list[int]``, ``vocab_size`` and ``eos_id``.

    Raises:
        DataError: ``path`` does not exist or holds no ``tokenizer.json``.
    """
    if path is None:
        return ByteTokenizer()
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file not found (expected a local tokenizer.json)")
    return FileTokenizer(path, eos_token=eos_token)
