"""Install a plugin the way pip would, into a folder: a ``*.dist-info`` with ``entry_points.txt``.

``importlib.metadata`` finds distributions on ``sys.path`` (and ``PYTHONPATH`` in a subprocess), so
a test that puts the folder there sees the plugin's entry points exactly as after ``pip install``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def install(root: Path, dist: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write ``root/<dist>-0.1.dist-info`` registering ``{group: {name: "module:attr"}}``."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def subprocess_env(root: Path) -> dict[str, str]:
    """The environment of a child process that sees ``root`` (and this interpreter's path)."""
    path = os.pathsep.join([str(root), *sys.path])
    return {**os.environ, "PYTHONPATH": path}
