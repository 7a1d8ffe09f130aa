"""Helpers shared by the DAG tests (workflow, cluster, browser): a copy of the project with a small demo, and
commands run in it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "ace_lora", ".dvc/config", ".gitignore"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}

# A demo small enough for CI: the same stages and data sets, fewer images and steps.
SMALL = {
    "data": {"demo": {"n_train": 192, "n_per_class": 8}},
    "train": {"epochs": 2, "batch_size": 32, "validate_every": 1, "checkpoint_every": 5},
    "evaluate": {"bootstrap": 20},
}


def merge_params(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge_params(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def project_copy(dest: Path, override: dict | None = None) -> Path:
    for name in PROJECT_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    if override:
        params = merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run_command(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc
