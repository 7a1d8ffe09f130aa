"""What a result depends on: the project modules a stage imports, and content hashes of files and settings.

:func:`import_closure` reads the source (it imports nothing): every ``import`` statement of a module, function-local
ones included, that names one of ``ace_lora``'s own modules is followed, and so is every package ``__init__`` on
the way (importing ``ace_lora.data.dataset`` runs ``ace_lora/data/__init__.py`` first). The training run's identity
(:mod:`ace_lora.train`) hashes the source of that closure; a test checks that each DAG declares it as code deps.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = "ace_lora"
PACKAGE_ROOT = Path(__file__).resolve().parent  # the ace_lora/ folder


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """Source file of module ``name`` (``ace_lora.x.y``) under the package folder ``root``; None if there is none."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names every import statement of ``module`` may load (``from a import b``: ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(tree):  # walks function bodies too: function-local imports count
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """Sorted names of the ``ace_lora`` modules ``modules`` load, themselves and parent packages included.

    Static: every import statement anywhere in a module's source counts, whether or not it runs.
    """
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen or module_file(name, root) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
        path = module_file(name, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            if imported == PACKAGE or imported.startswith(PACKAGE + "."):
                todo.append(imported)
    return sorted(seen)


def module_paths(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> list[str]:
    """Repository-relative source paths (``ace_lora/train.py``) of ``modules``."""
    return sorted(str(module_file(m, root).relative_to(root.parent)) for m in modules)


# -------------------------------------------------------------------------------------------- hashing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_files(files: dict[str, Path]) -> str:
    """sha256 over ``name -> content`` pairs in name order: renaming, adding, removing or editing a file changes it."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{sha256_file(files[name])}\n".encode())
    return digest.hexdigest()


def hash_path(path: str | Path) -> str | None:
    """Content hash of a file, or of every file under a folder by sorted relative path; None when it does not exist."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    return hash_files({p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()})


def code_hash(modules: Iterable[str], root: Path = PACKAGE_ROOT) -> str:
    """Content hash of the source files of ``modules``."""
    return hash_files({p: root.parent / p for p in module_paths(modules, root)})


def hash_json(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values), to name the keys two settings differ in."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two nested mappings (present in one only included)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, KeyError) != fb.get(k, KeyError))
