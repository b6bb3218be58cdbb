"""A real-text suite from files every machine here has (``data.suite = "realtext"``).

Python's standard library, its reference documentation and Debian's licence texts, byte tokens.

Nothing is shipped or downloaded: the text is read at run time from the running Python
(``sysconfig``'s stdlib folder, ``pydoc_data.topics``) and from ``/usr/share/common-licenses``
(Debian's ``base-files``). Each file (or documentation topic) is one document, followed by the
byte tokenizer's EOS id (vocabulary 257). Training domains, ``tokens_per_domain`` bytes each:

- ``code``: the sources of a set of stdlib packages (json, email, http, ...);
- ``docs``: the first part of the reference documentation's topics (English prose about Python);
- ``licenses``: the licence texts (legal English);
- ``gui``: the ``idlelib`` and ``tkinter`` sources (code of another kind: a GUI);
- ``noise``: i.i.d. random bytes (a known-useless domain).

The target set is drawn from two of them: held-out code from OTHER packages (asyncio, unittest)
and the held-out rest of the documentation topics, half each. A good mixture puts its weight on
``code`` and ``docs`` and almost none on ``noise`` (``known_answer``). ``val="per_domain"`` gives
each training domain a held-out stream of its own sources (disjoint from its training bytes).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from .corpus import DataError, DomainCorpus

__all__ = ["make_realtext_suite"]

EOS, VOCAB = 256, 257
LICENSES = Path("/usr/share/common-licenses")
CODE = ("json", "email", "http", "urllib", "logging", "concurrent", "importlib", "xml")
TARGET_CODE = ("asyncio", "unittest")
OTHER_CODE = ("idlelib", "tkinter")
DOMAINS = ("code", "docs", "gui", "licenses", "noise")


def _join(documents: list[str], limit: int) -> np.ndarray:
    """UTF-8 bytes of ``documents``, each followed by EOS, cut to ``limit`` tokens (uint16)."""
    parts, total = [], 0
    for doc in documents:
        ids = np.frombuffer(doc.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
        parts += [ids, np.array([EOS], dtype=np.uint16)]
        total += ids.size + 1
        if total >= limit:
            break
    out = np.concatenate(parts)[:limit] if parts else np.zeros(0, np.uint16)
    if out.size < limit:
        raise DataError(f"realtext suite: only {out.size} bytes of text for a {limit}-byte domain")
    return out


def _sources(packages: tuple[str, ...]) -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for name in packages:
        for path in sorted((lib / name).rglob("*.py")):
            if "test" not in path.relative_to(lib).parts[1:]:
                docs.append(path.read_text(encoding="utf-8", errors="replace"))
    return docs


def _topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _licenses() -> list[str]:
    if not LICENSES.is_dir():
        raise DataError(f"realtext suite: {LICENSES} not found (Debian's base-files package)")
    files = sorted(p for p in LICENSES.iterdir() if p.is_file())
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def _split(stream: np.ndarray, held: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held-out)``: the last ``held`` tokens are held out."""
    return stream[:-held], stream[-held:]


def make_realtext_suite(
    *, seed: int = 0, tokens_per_domain: int = 200_000, val: str = "target", val_tokens=None
) -> DomainCorpus:
    """The real-text corpus (see the module docstring); ``seed`` draws the noise bytes.

    Args:
        seed: the noise domain's random bytes (the text is the machine's).
        tokens_per_domain: training bytes per domain.
        val: ``"target"`` (held-out code of other packages + held-out docs) or ``"per_domain"``.
        val_tokens: tokens per validation stream (default ``tokens_per_domain // 4``).

    Returns:
        A ``DomainCorpus`` with ``known_answer``.

    Raises:
        DataError: a source has too little text on this machine.
    """
    held = tokens_per_domain // 4 if val_tokens is None else int(val_tokens)
    n = tokens_per_domain + held
    topics = _topics()
    half = len(topics) * 3 // 4  # the last quarter of the topics is never trained on
    text = {
        "code": _join(_sources(CODE), n),
        "docs": _join(topics[:half], n),
        "licenses": _join(_licenses(), n),
        "gui": _join(_sources(OTHER_CODE), n),
    }
    rng = np.random.default_rng([seed, 7])
    text["noise"] = rng.integers(0, 256, n, dtype=np.uint16)
    train = tuple(_split(text[d], held)[0] for d in DOMAINS)
    if val == "per_domain":
        val_domains, val_streams = DOMAINS, tuple(_split(text[d], held)[1] for d in DOMAINS)
    else:
        code = _join(_sources(TARGET_CODE), held // 2)
        docs = _join(topics[half:], held - held // 2)
        val_domains, val_streams = ("target",), (np.concatenate([code, docs]),)
    known = {
        "up": ["code", "docs"],
        "down": ["noise"],
        "neutral": ["gui", "licenses"],
        "noise": "noise",
        "target": "code",
        "uniform_entropy": float(np.log(VOCAB)),
    }
    return DomainCorpus(DOMAINS, train, val_domains, val_streams, VOCAB, known)
