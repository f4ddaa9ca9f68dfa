"""The linter is configured and in the loop: pyproject.toml holds ruff's rules, `make test` runs `make lint`, and
the rules do fail on what they are meant to catch (a check that cannot fail proves nothing)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"

needs_ruff = pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                                reason="ruff is not installed (it comes with the dev extra: make install)")


def ruff_check(path: Path) -> subprocess.CompletedProcess:
    """`ruff check` of one file under the project's own configuration."""
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(PYPROJECT), str(path)],
                          capture_output=True, text=True, timeout=60)


def test_ruff_is_configured_and_make_test_runs_it():
    text = PYPROJECT.read_text()
    assert "[tool.ruff]" in text and "[tool.ruff.lint]" in text
    assert re.search(r"^line-length = 120$", text, flags=re.M)
    assert re.search(r'^select = \["E", "F", "W", "I", "B"\]', text, flags=re.M)
    assert re.search(r'^dev = \[[^\]]*"ruff', text, flags=re.M | re.S), "ruff belongs in the dev extra"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lint:.*\n\t\$\(PY\) -m ruff check src tests$", makefile, flags=re.M)
    assert re.search(r"^test: [^#\n]*\blint\b", makefile, flags=re.M), "make test runs make lint"
    assert "make test" in (REPO / ".ci" / "run").read_text()


@needs_ruff
def test_ruff_fails_on_an_unused_import_and_passes_once_it_is_gone(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os\nimport sys\n\nprint(sys.argv)\n")
    found = ruff_check(source)
    assert found.returncode == 1 and "F401" in found.stdout, found.stdout + found.stderr
    source.write_text("import sys\n\nprint(sys.argv)\n")
    clean = ruff_check(source)
    assert clean.returncode == 0, clean.stdout + clean.stderr


@needs_ruff
def test_ruff_holds_lines_to_120_characters(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(f"NAME = \"{'x' * 111}\"\n")  # 120 characters
    assert ruff_check(source).returncode == 0
    source.write_text(f"NAME = \"{'x' * 112}\"\n")  # 121
    found = ruff_check(source)
    assert found.returncode == 1 and "E501" in found.stdout, found.stdout + found.stderr
