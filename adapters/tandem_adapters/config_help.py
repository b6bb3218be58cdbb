"""One-line help for every configuration key, read from the comments beside the dataclass fields.

The config dataclasses document each key with a ``# comment`` after its field (or in the comment
lines just above it); ``field_help(cls)`` collects them with ``inspect`` and ``tokenize``, so
``tandem config`` shows them without a second copy of the text; tests/test_config_command.py
fails for a key without one.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import textwrap
import tokenize

__all__ = ["field_help"]

_FIELD = re.compile(r"^\s*([A-Za-z_]\w*)\s*:")


def field_help(cls: type) -> dict[str, str]:
    """``{field: one-line help}`` of a dataclass, from its source comments.

    A trailing comment wins, then the comment lines right above the field. Fields of a class
    whose source cannot be read get ``""``.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    try:
        found = _comments(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, tokenize.TokenError, IndentationError):
        found = {}
    return {n: found.get(n) for n in names}


def _comments(source: str) -> dict[str, str]:
    """``{name: comment}`` for each ``name: type ...  # comment`` line of a class body."""
    out: dict[str, str] = {}
    above: list[str] = []
    lines = source.splitlines()
    trailing = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    for number, line in enumerate(lines, start=1):
        comment = trailing.get(number)
        if comment and not line[: comment[0]].strip():  # a comment line on its own
            above.append(comment[1])
            continue
        match = _FIELD.match(line)
        if match and line.startswith("    ") and not line.startswith("     "):
            # lines above may be a section title ("# batches"): every field has its own comment
            name = match.group(1)
            out[name] = comment[1] if comment else " ".join(above)
        above = []
    return out
