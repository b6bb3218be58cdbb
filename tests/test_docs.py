"""Documentation that points at tests must point at tests that exist."""

import re
from pathlib import Path

import pytest

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


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _block(text: str) -> str:
    return next(b for b in _readme_blocks() if text in b)


def test_readme_python_blocks_compile():
    blocks = _readme_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")


def test_readme_loop_runs_as_written():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    loop = _block("from tandem_torch import Twins")
    assert "range(24 * schedule.length)" in loop  # 600 proxy steps as written; 2 episodes here
    scope: dict = {}
    exec(loop.replace("range(24 * schedule.length)", "range(2 * schedule.length)"), scope)
    summary, state = scope["summary"], scope["state"]
    assert int(state.count) == 2 and abs(float(summary.average.sum()) - 1.0) < 1e-6


def test_readme_trainer_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    example = _block("from tandem_torch import TandemTrainer")
    assert "max_steps=600" in example
    monkeypatch.chdir(tmp_path)  # output_dir="out"
    scope: dict = {}
    exec(example.replace("max_steps=600", "max_steps=50"), scope)
    average = scope["trainer"].mixture_summary().average
    assert abs(float(average.sum()) - 1.0) < 1e-6 and (tmp_path / "out" / "mixture.json").exists()


def test_readme_engine_example_runs():
    pytest.importorskip("torch")
    example = _block("backend.make_engine")
    assert '"steps": 600' in example
    scope: dict = {}
    exec(example.replace('"steps": 600', '"steps": 30'), scope)
    result = scope["result"]
    assert result.steps == 30 and abs(result.average.sum() - 1.0) < 1e-6
