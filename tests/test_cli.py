"""The stage CLI: user errors are one line naming the problem (exit 2); helper commands print what they promise."""

import shutil
from pathlib import Path

import pytest

from ace_lora.cli import main, stage_paths
from ace_lora.config import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("argv", "expected"), [
    (["prepare", "chexpert"], "python -m ace_lora fetch chexpert"),
    (["evaluate", "base", "chexpert"], "adapter.json"),
    (["train", "nosuch"], "methods.nosuch"),
    (["--params", "missing.yaml", "prompts"], "missing.yaml"),
])
def test_user_errors_are_one_line_and_exit_2(project, capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (project / "results").exists() and not (project / "data").exists()


def test_describe_model_prints_the_paper_parameter_count(capsys):
    assert main(["describe-model", "--preset", "biomedclip"]) == 0
    assert "969,217" in capsys.readouterr().out


def test_stage_paths_follow_params(project):
    paths = stage_paths(load_params("params.yaml"), method="ace_lora", dataset="siim")
    assert paths["metrics"] == Path("results/metrics/evaluate/ace_lora/siim.json")
    assert paths["processed"] == Path("data/processed/siim")
    assert paths["checkpoints"] == Path("results/checkpoints/ace_lora")  # outside the DAG's outputs
