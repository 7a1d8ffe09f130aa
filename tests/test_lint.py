"""House rules a linter checks: `ruff check` as configured in pyproject.toml (`snakemake --lint`:
tests/test_workflow.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "ace_lora", "tests",
                           "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"ruff (pip install -e '.[test]'):\n{proc.stdout}{proc.stderr}"
