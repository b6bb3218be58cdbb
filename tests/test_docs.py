"""Documentation that points at tests must point at tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    return set(re.findall(r"^\s*def (test_\w+)", path.read_text(), flags=re.M))


def test_every_reliability_row_names_existing_tests():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 11
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)?::(\w+)", row)  # in order: `::x` uses the last file
        assert refs or "design" in row, f"row without a test: {row}"
        current = None
        for file, name in refs:
            current = file or current
            assert name in _test_names(ROOT / current), f"{current}::{name} does not exist"
