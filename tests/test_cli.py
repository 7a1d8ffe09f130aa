"""The stage CLI: user errors are one line naming the problem (exit 2); helper commands print what they promise."""

import errno
import gzip
import importlib.metadata
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ace_lora import cli
from ace_lora.cli import DATASETS, main, stage_paths
from ace_lora.config import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["prepare", "chexpert"], "python -m ace_lora fetch chexpert"),
        (["evaluate", "base", "chexpert"], "adapter.json"),
        (["train", "nosuch"], "methods.nosuch"),
        (["--params", "missing.yaml", "prompts"], "missing.yaml"),
    ],
)
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


# ------------------------------------------------------------------------------- bad parameters, one line each

# (change to params.yaml, the key the error must name); every case exits 2 before any stage output changes
BAD_PARAMS = [
    (lambda p: p["methods"].update({"../../../x": {}}), "methods.../../../x"),
    (lambda p: p["methods"].update({"m`touch pwned`": {}}), "methods.m`touch pwned`"),
    (lambda p: p["methods"].update({"-rf": {}}), "methods.-rf"),
    (lambda p: p["methods"].update({"a b": {}}), "methods.a b"),
    (lambda p: p["train"].update(grad_clip=-1.0), "train.grad_clip"),
    (lambda p: p["train"].update(grad_clip=0), "train.grad_clip"),
    (lambda p: p["train"].update(max_steps=0), "train.max_steps"),
    (lambda p: p["train"].update(lr=float("nan")), "train.lr"),
    (lambda p: p["train"].update(lr=float("inf")), "train.lr"),
    (lambda p: p["train"].update(lr=0.0), "train.lr"),
    (lambda p: p["train"].update(weight_decay=float("nan")), "train.weight_decay"),
    (lambda p: p["train"].update(warmup_epochs=float("inf")), "train.warmup_epochs"),
    (lambda p: p["train"].update(betas=["a", "b"]), "train.betas[0]"),
    (lambda p: p["train"].update(betas=[0.9]), "train.betas"),
    (lambda p: p["train"].update(betas=[0.9, 1.0]), "train.betas[1]"),
    (lambda p: p["train"].update(seed=-1), "train.seed"),
    (lambda p: p["model"]["lora"].update(dropout=1.0), "model.lora.dropout"),
    (lambda p: p["model"]["lora"].update(alpha=0.0), "model.lora.alpha"),
    (lambda p: p["model"]["lora"].update(layers=[0, -1]), "model.lora.layers[1]"),
    (lambda p: p["methods"]["ace_lora"].update(lora={"dropout": float("nan")}), "methods.ace_lora.lora.dropout"),
    (lambda p: p["prompts"].update(templates={"chest": ["a {0} chest X-ray"]}), "prompts.templates.chest"),
    (lambda p: p["prompts"].update(templates={"chest": ["a chest X-ray of {finding}"]}), "prompts.templates.chest"),
    (lambda p: p["prompts"].update(templates={"chest": ["a chest X-ray"]}), "prompts.templates.chest"),
    (lambda p: p["prompts"].update(templates={"chest": "{} and {}"}), "prompts.templates.chest"),
    (lambda p: p["prompts"].update(templates={"chest": ["a {} chest {"]}), "prompts.templates.chest"),
    (lambda p: p["prompts"].update(templates={"../chest": ["{}"]}), "prompts.templates.../chest"),
    (lambda p: p["prompts"].update(class_names={"rsna": "pneumonia"}), "prompts.class_names.rsna"),
    (lambda p: p["prompts"].update(class_names={"rsna": {"Pneumonia": ""}}), "prompts.class_names.rsna.Pneumonia"),
    (lambda p: p["paths"].update(results="out;touch pwned"), "paths.results"),
    (lambda p: p["paths"].update(raw="-data"), "paths.raw"),
    (lambda p: p["evaluate"].update(dataeff_fractions=[0.0, 1.0]), "evaluate.dataeff_fractions[0]"),
    (lambda p: p["evaluate"].update(dataeff_lr=float("nan")), "evaluate.dataeff_lr"),
    (lambda p: p["data"].update(sha256={"lc25000": "abc"}), "data.sha256.lc25000"),
    (lambda p: p["data"].update(urls={"lc25000": 3}), "data.urls.lc25000"),
]


@pytest.fixture
def prompts_done(project):
    """A project whose prompts stage has run with good params: (project, bytes of its output)."""
    assert main(["prompts"]) == 0
    return project, (project / "results/prompts.json").read_bytes()


@pytest.mark.parametrize(("change", "key"), BAD_PARAMS, ids=[key for _, key in BAD_PARAMS])
def test_bad_params_are_one_line_naming_the_key_and_keep_outputs(prompts_done, capsys, change, key):
    project, good = prompts_done
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    capsys.readouterr()
    assert main(["prompts"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"params.yaml: {key}" in errors[0], errors[0]
    assert (project / "results/prompts.json").read_bytes() == good
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml", "results"]  # nothing escaped
    assert not list(project.rglob("pwned"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EOFError("Compressed file ended before the end-of-stream marker was reached"), "truncated or corrupt"),
        (gzip.BadGzipFile("Not a gzipped file (b'ab')"), "Not a gzipped file"),
        (zipfile.BadZipFile("File is not a zip file"), "truncated or corrupt"),
        (pickle.UnpicklingError("invalid load key, 'x'."), "truncated or corrupt"),
        (OSError(errno.ENOSPC, "No space left on device", "results/x.tmp"), "results/x.tmp: no space left"),
        (pd.errors.ParserError("Error tokenizing data.\nC error: Expected 3 fields in line 4, saw 5"), "line 4"),
        (pd.errors.EmptyDataError("No columns to parse from file"), "No columns"),
        (pd.errors.MergeError("Merge keys are not unique in left dataset"), "not unique"),
        (subprocess.CalledProcessError(1, ["torchrun"]), "exit code 1"),
        (KeyError("methods.x: no such method"), "methods.x: no such method"),
    ],
)
def test_error_classes_of_bad_input_are_one_line(project, capsys, monkeypatch, error, expected):
    def fail(args, params):
        raise error

    monkeypatch.setattr(cli, "cmd_prompts", fail)
    assert main(["prompts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error (prompts): ") and expected in err, err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------ version, help


def test_version():
    proc = subprocess.run([sys.executable, "-m", "ace_lora", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"ace-lora {importlib.metadata.version('ace-lora')}"
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("ace-lora") == "ace_lora.cli:main"  # `ace-lora --version` runs the same main


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["prepare", "--help"]])
def test_help_lists_methods_and_data_sets_without_markup(project, capsys, argv):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"]["my_method"] = {}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and not re.search(r":(func|class|mod|data):", out)
    if argv[0] != "prepare":
        assert all(m in out for m in params["methods"]), out
    if argv[0] != "train":
        assert all(d in out for d in DATASETS), out
