"""Stage code deps: each stage of both DAGs declares every ace_lora module the stage runs.

The closure is computed here from the source with a small AST walk, independently of any project helper: a stage
runs ``python -m ace_lora ... <stage>``, that is ``ace_lora/__main__.py``, the module-level imports of
``ace_lora/cli.py`` and the imports inside its ``cmd_<stage>`` function (and the cli helpers it calls); every
ace_lora module reached that way counts with all of its own imports, function-local ones included, and the package
``__init__.py`` files Python runs on the way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ace_lora"
STAGES = ("fetch", "prepare", "prompts", "train", "evaluate", "report")


def _module_file(name: str) -> Path | None:
    """``ace_lora.x.y`` -> its source file (package: ``__init__.py``), or None outside the package."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(nodes: list[ast.AST], module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules imported anywhere in ``nodes`` (``from a import b`` also tries ``a.b``)."""
    names = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _closure(start: set[str], walked: dict[str, Path]) -> set[Path]:
    """Source files of every ace_lora module reachable from the module names ``start``; ``walked`` are already
    accounted for (their imports are not followed)."""
    todo = {p for name in start for p in _with_parents(name)}
    seen = dict(walked)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        tree = ast.parse(path.read_text(), filename=str(path))
        for imported in _imported_names([tree], name, path.name == "__init__.py"):
            todo |= {p for p in _with_parents(imported) if p not in seen}
    return {path.relative_to(ROOT) for path in seen.values()}


def stage_closure(stage: str) -> set[Path]:
    """Modules ``python -m ace_lora <stage>`` runs: the entry point, cli's top level, the stage function."""
    tree = ast.parse((ROOT / PACKAGE / "cli.py").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    # the stage function and the cli functions it calls (transitively)
    used, todo = set(), [f"cmd_{stage}"]
    while todo:
        name = todo.pop()
        if name in used or name not in functions:
            continue
        used.add(name)
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    assert f"cmd_{stage}" in used, f"ace_lora/cli.py has no cmd_{stage}"
    names = _imported_names(top_level + [functions[n] for n in used], f"{PACKAGE}.cli", False)
    cli = {f"{PACKAGE}.cli": ROOT / PACKAGE / "cli.py"}  # walked above: only the stage's part of it runs
    return _closure(names | {f"{PACKAGE}.__main__"}, cli)


def _covered(module: Path, declared: list[str]) -> bool:
    return any(module == Path(d) or Path(d) in module.parents for d in declared)


def _smk_stage_code() -> dict[str, list[str]]:
    """STAGE_CODE of common.smk: its top-level list/dict assignments evaluated in order (nothing else runs)."""
    namespace: dict = {"__builtins__": {}}
    for node in ast.parse((ROOT / "workflow/rules/common.smk").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                namespace[node.targets[0].id] = eval(
                    compile(ast.Expression(node.value), "common.smk", "eval"), namespace
                )
            except Exception:  # needs the Snakemake config or a function: not a code list
                continue
    assert "STAGE_CODE" in namespace, "workflow/rules/common.smk defines no STAGE_CODE"
    return namespace["STAGE_CODE"]


def _dvc_stage_code() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: [d for d in (body.get("do", body)["deps"]) if d.startswith(PACKAGE)] for name, body in stages.items()}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_the_import_closure(stage):
    closure = stage_closure(stage)
    assert Path("ace_lora/cli.py") in closure and Path("ace_lora/config.py") in closure
    for dag, declared in (("workflow/rules/common.smk STAGE_CODE", _smk_stage_code()), ("dvc.yaml", _dvc_stage_code())):
        missing = sorted(str(m) for m in closure if not _covered(m, declared[stage]))
        assert not missing, f"{dag}: stage {stage} runs {', '.join(missing)} but does not declare it as a dep"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_declare_nothing_the_stage_does_not_run(stage):
    """A module declared but never run would rerun the stage (and, for train, retrain) when it changes."""
    closure = stage_closure(stage)
    for dag, declared in (("workflow/rules/common.smk STAGE_CODE", _smk_stage_code()), ("dvc.yaml", _dvc_stage_code())):
        extra = []
        for dep in declared[stage]:
            files = sorted((ROOT / dep).glob("*.py")) if (ROOT / dep).is_dir() else [ROOT / dep]
            extra += [
                str(f.relative_to(ROOT)) for f in files if f.suffix == ".py" and f.relative_to(ROOT) not in closure
            ]
        assert not extra, f"{dag}: stage {stage} declares {', '.join(extra)} but never imports it"


@pytest.mark.parametrize("stage", STAGES)
def test_declared_code_deps_exist(stage):
    for declared in (_smk_stage_code()[stage], _dvc_stage_code()[stage]):
        absent = [d for d in declared if not (ROOT / d).exists()]
        assert not absent, f"stage {stage} declares missing code deps {absent}"


def test_the_closure_walk_sees_function_local_imports_and_packages():
    """The walk itself: a function-local import counts, and so does a package __init__ run on the way."""
    assert Path("ace_lora/data/fetch.py") in stage_closure("fetch")  # imported inside cmd_fetch only
    assert Path("ace_lora/data/__init__.py") in stage_closure("fetch")
    assert Path("ace_lora/train.py") not in stage_closure("report")  # stages do not pull in each other
    assert Path("ace_lora/eval/grounding.py") in stage_closure("evaluate")  # through zeroshot, which imports it
