"""House rules a linter checks: `ruff check` and `ruff format --check` as configured in pyproject.toml, short
functions in the library, test modules that share helpers through conftest.py and support modules only
(`snakemake --lint`: tests/test_workflow.py)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
MAX_FUNCTION_LINES = 80


def test_ruff_check_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "ace_lora", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"ruff (pip install -e '.[test]'):\n{proc.stdout}{proc.stderr}"


def test_code_is_formatted():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "ace_lora", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"run `ruff format ace_lora tests benchmarks`:\n{proc.stdout}{proc.stderr}"


def test_no_library_function_exceeds_the_line_limit():
    long = []
    for path in sorted((ROOT / "ace_lora").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(long)


def _imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, function-local imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py, shared helpers in support modules (model_support.py, ...): importing
    one test module from another runs its module-level code and registers its fixtures twice."""
    test_modules = {path.stem for path in TESTS.glob("test_*.py")}
    offenders = []
    for path in sorted([*TESTS.glob("test_*.py"), TESTS / "conftest.py"]):
        imported = sorted((_imported_modules(path) & test_modules) - {path.stem})
        if imported:
            offenders.append(f"tests/{path.name} imports {', '.join(imported)}")
    assert not offenders, "move what they share to tests/conftest.py or a support module:\n" + "\n".join(offenders)
