"""The public verbs re-exported by the ``ace_lora`` package: they resolve, load lazily, and keep every stage's code
dependencies as they are."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ace_lora
from ace_lora.provenance import import_closure

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ace_lora.__all__)
def test_every_public_name_resolves_to_a_callable(name):
    assert callable(getattr(ace_lora, name))
    assert name in dir(ace_lora)


def test_public_names_are_the_functions_of_their_modules():
    from ace_lora.config import load_params
    from ace_lora.eval.zeroshot import evaluate_benchmark
    from ace_lora.models.checkpoint import import_official_checkpoint, load_adapter

    assert ace_lora.load_params is load_params
    assert ace_lora.load_adapter is load_adapter
    assert ace_lora.import_official_checkpoint is import_official_checkpoint
    assert ace_lora.evaluate_benchmark is evaluate_benchmark


def test_import_ace_lora_loads_no_heavy_library():
    code = (
        "import sys, ace_lora; heavy = sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)); "
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"`import ace_lora` imported {proc.stdout.strip()}"


def test_package_init_adds_nothing_to_a_stage_import_closure():
    """``ace_lora/__init__.py`` is in every stage's code deps: it must not pull in the modules it re-exports."""
    assert import_closure(["ace_lora"]) == ["ace_lora"]


def test_unknown_attribute_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_verb"):
        ace_lora.no_such_verb  # noqa: B018
    assert not hasattr(ace_lora, "no_such_verb")


def test_readme_python_api_example_uses_public_names():
    section = ROOT.joinpath("README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"\bace_lora\.(\w+)\(", section))
    assert used, "README's Python API section has no ace_lora.<verb>(...) example"
    assert used <= set(ace_lora.__all__), f"README uses names ace_lora does not export: {used - set(ace_lora.__all__)}"
