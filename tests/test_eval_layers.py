"""The layering of ace_lora/eval/ (docs/ARCHITECTURE.md, "Evaluation"), read from the source with ``ast``.

No import cycle between the evaluation modules and none dodged by a function-local import; no figure drawing in
evaluation; ``EvalModel`` names exactly what evaluation calls on a model, and the real model and the tests' fake
satisfy it; no function over 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ace_lora.eval.common import EvalModel

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "ace_lora" / "eval"
MODULES = {f"ace_lora.eval.{p.stem}": p for p in sorted(EVAL.glob("*.py")) if p.stem != "__init__"}


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(absolute module name, node) of every import anywhere in ``tree``; ``from a import b`` also gives ``a.b``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to ace_lora.eval
                base = ".".join(["ace_lora", "eval"][: 3 - node.level] + ([base] if base else []))
            out += [(base, node)] + [(f"{base}.{alias.name}", node) for alias in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {name for name, _ in _imports(_tree(m)) if name in MODULES and name != m} for m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path (first = last), or []."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return []


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_eval_modules_import_each_other_without_a_cycle():
    graph = _graph()
    assert {"ace_lora.eval.common", "ace_lora.eval.grounding", "ace_lora.eval.zeroshot"} <= set(graph)
    assert not (cycle := _cycle(graph)), f"import cycle in ace_lora/eval: {' -> '.join(cycle)}"
    assert "ace_lora.eval.zeroshot" not in graph["ace_lora.eval.grounding"]
    assert graph["ace_lora.eval.common"] <= {"ace_lora.eval.metrics"}  # the shared layer imports no protocol


def test_eval_modules_import_each_other_at_module_level_only():
    for module in MODULES:
        tree = _tree(module)
        top = {id(n) for n in tree.body}
        local = [
            f"{MODULES[module].name}:{node.lineno} imports {name}"
            for name, node in _imports(tree)
            if name.startswith("ace_lora.eval") and id(node) not in top
        ]
        assert not local, f"function-local imports between evaluation modules: {local}"


def test_evaluation_draws_no_figures():
    for module in MODULES:
        drawn = sorted(
            {
                name
                for name, _ in _imports(_tree(module))
                if name.split(".")[0] == "matplotlib" or name.startswith("ace_lora.plots")
            }
        )
        assert not drawn, f"{MODULES[module].name} imports {drawn}: evaluation returns data, the stage draws"


def _model_attributes() -> set[str]:
    """Attributes evaluation reads on its ``model`` arguments (``model.x``), over every module of ace_lora/eval."""
    names = set()
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "model":
                names.add(node.attr)
    return names


def _protocol_members() -> set[str]:
    tree = _tree("ace_lora.eval.common")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EvalModel")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)} | {
        n.name for n in cls.body if isinstance(n, ast.FunctionDef)
    }


def test_the_model_protocol_names_exactly_what_evaluation_calls():
    assert _protocol_members() == _model_attributes()


def test_the_real_model_and_the_fake_satisfy_the_protocol(tmp_path):
    from ace_lora.models.ace_lora import AceLoraModel
    from eval_fakes import FakeModel
    from model_support import tiny_model

    model = tiny_model(tmp_path)
    assert isinstance(model, AceLoraModel) and isinstance(model, EvalModel)
    assert isinstance(model.preset.image_size, int)
    assert isinstance(FakeModel(), EvalModel)
    assert not isinstance(object(), EvalModel)


def test_no_function_over_80_lines():
    long = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, f"functions over 80 lines in ace_lora/eval: {long}"
