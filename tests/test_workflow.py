"""The DAG: Snakemake and DVC declare the same stages; the demo runs end to end; reruns are minimal."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _project_copy(dest: Path, override: dict | None = None) -> Path:
    for name in PROJECT_FILES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    if override:
        params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


# ------------------------------------------------------------------------------------------ DAG in sync


def _strip_redirect(cmd: str) -> str:
    return re.sub(r"\s*(2>|>)\s*\S+(\s*2>&1)?", "", cmd).strip()


def _snakemake_jobs(cwd: Path) -> dict[str, tuple[frozenset, frozenset]]:
    """Dry-run every job: shell command -> (inputs, outputs)."""
    out = _run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", "-p"], cwd).stdout
    jobs = {}
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, re.M))
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        if shell is None or shell.group(1) == "None":  # the `all` target runs no command
            continue
        split = lambda s: frozenset(p.strip() for p in s.split(",") if p.strip())
        jobs[_strip_redirect(shell.group(1))] = (split(fields.get("input", "")), split(fields["output"]))
    return jobs


def _dvc_stages(cwd: Path) -> dict[str, tuple[frozenset, frozenset, frozenset, str]]:
    """Every DVC stage: command -> (deps, outs, params, stage name)."""
    from dvc.repo import Repo

    stages = {}
    with Repo(str(cwd), uninitialized=True) as repo:
        for stage in repo.index.stages:
            params = frozenset(p for dep in stage.deps if hasattr(dep, "params") for p in dep.params)
            deps = frozenset(dep.def_path for dep in stage.deps if not hasattr(dep, "params"))
            outs = frozenset(out.def_path for out in stage.outs)
            stages[stage.cmd] = (deps, outs, params, stage.name.split("@")[0])
    return stages


def _smk_constant(name: str):
    tree = ast.parse((ROOT / "workflow/rules/common.smk").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def test_snakemake_and_dvc_declare_the_same_dag():
    snake = _snakemake_jobs(ROOT)
    dvc = _dvc_stages(ROOT)
    assert set(snake) == set(dvc), f"commands differ: {set(snake) ^ set(dvc)}"
    for cmd, (inputs, outputs) in snake.items():
        deps, outs, params, stage = dvc[cmd]
        # Snakemake lists each file of a folder that DVC names as one dep (code folders, the metrics folder)
        collapsed = frozenset(p if p in deps else next((d for d in deps if p.startswith(d + "/")), p) for p in inputs)
        assert collapsed == deps, f"{cmd}: inputs {sorted(collapsed ^ deps)} differ"
        assert outputs == outs, f"{cmd}: outputs {sorted(outputs ^ outs)} differ"
        assert set(_smk_constant("STAGE_PARAMS")[stage]) == params, f"{stage}: params differ"


def test_dag_covers_every_method_and_dataset():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmds = set(_dvc_stages(ROOT))
    for method in params["methods"]:
        assert f"python -m ace_lora --params params.yaml train {method} --resume" in cmds
        for dataset in params["evaluate"]["datasets"]:
            assert f"python -m ace_lora --params params.yaml evaluate {method} {dataset}" in cmds


# ----------------------------------------------------------------------------------- params validation


def test_schema_file_is_generated_from_the_config():
    proc = _run([sys.executable, "-m", "ace_lora", "schema", "--check", "workflow/schemas/params.schema.json"],
                ROOT, check=False)
    assert proc.returncode == 0, proc.stderr


def test_bad_params_fail_before_any_stage_naming_the_key(tmp_path):
    project = _project_copy(tmp_path, {"model": {"hgnn": {"towers": "sideways"}}})
    proc = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], project, check=False)
    assert proc.returncode != 0
    assert "sideways" in proc.stdout + proc.stderr and "towers" in proc.stdout + proc.stderr
    proc = _run([sys.executable, "-m", "ace_lora", "prompts"], project, check=False)
    assert proc.returncode == 2
    assert "model.hgnn.towers" in proc.stderr
    assert not (project / "results").exists()


# --------------------------------------------------------------------------------------- the demo, run


# snakemake_demo (the small demo run to the end): tests/conftest.py, shared with tests/test_browser.py


def test_snakemake_demo_produces_the_benchmark_table(snakemake_demo):
    params = yaml.safe_load((snakemake_demo / "params.yaml").read_text())
    table = (snakemake_demo / "results/benchmarks.md").read_text()
    for method in params["methods"]:
        assert method in table
        for dataset in params["evaluate"]["datasets"]:
            metrics = json.loads((snakemake_demo / f"results/metrics/evaluate/{method}/{dataset}.json").read_text())
            assert metrics and all(key.count("/") == 2 for key in metrics), metrics
    assert (snakemake_demo / "results/benchmarks.csv").stat().st_size > 0


def test_demo_logs_say_what_happened(snakemake_demo):
    """Evaluation and report logs name counts, final metrics and where the outputs went."""
    params = yaml.safe_load((snakemake_demo / "params.yaml").read_text())
    log = (snakemake_demo / "results/logs/evaluate/ace_lora/chexpert.log").read_text()
    assert "chexpert5x200: " in log and "test images" in log and "zeroshot/chexpert5x200/accuracy=" in log
    assert "results/metrics/evaluate/ace_lora/chexpert.json" in log
    report = (snakemake_demo / "results/logs/report.log").read_text()
    n = len(params["methods"]), len(params["evaluate"]["datasets"])
    assert f"of {n[0]} methods x {n[1]} data sets" in report and "ace_lora/chexpert_acc" in report
    assert "results/metrics/summary.json" in report and "figures under results/report" in report
    summary = json.loads((snakemake_demo / "results/metrics/summary.json").read_text())
    assert {k.split("/")[0] for k in summary} == set(params["methods"])


def test_snakemake_rerun_does_nothing_and_param_change_reruns_only_dependants(snakemake_demo):
    proc = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    params = yaml.safe_load((snakemake_demo / "params.yaml").read_text())
    params["evaluate"]["bootstrap"] = 30
    (snakemake_demo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo).stdout
    rules = set(re.findall(r"^rule (\w+):", out, re.M))
    assert rules == {"evaluate", "report", "all"}, rules
    params["evaluate"]["ensemble"] = "token_average"  # also the validation metric of model selection
    (snakemake_demo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo).stdout
    assert set(re.findall(r"^rule (\w+):", out, re.M)) == {"train", "evaluate", "report", "all"}


def test_dvc_repro_demo_then_metrics_diff(tmp_path):
    override = _merge(SMALL, {"methods": {"base": {"train": False, "lora": {"enabled": False},
                                                   "hgnn": {"towers": "none"}}, "ace_lora": {}}})
    project = _project_copy(tmp_path, override)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"] = override["methods"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "demo"]):
        _run(cmd, project)
    _run(["dvc", "repro"], project)
    assert (project / "results/benchmarks.md").is_file()
    again = _run(["dvc", "repro"], project).stdout
    assert "Running stage" not in again
    _run(["git", "add", "-A"], project)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], project)
    params["evaluate"]["bootstrap"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = _run(["dvc", "repro", "--dry"], project).stdout
    stages = set(re.findall(r"Running stage '([\w@-]+)'", dry))
    assert stages and all(s.startswith(("evaluate@", "report")) for s in stages), stages
    params["evaluate"]["ensemble"] = "token_average"  # also the validation metric of model selection
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = _run(["dvc", "repro", "--dry"], project).stdout
    assert "train@ace_lora" in set(re.findall(r"Running stage '([\w@-]+)'", dry))
    params["evaluate"].update(bootstrap=SMALL["evaluate"]["bootstrap"], ensemble="mean")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "exp", "run", "-S", "evaluate.seed=1"], project)
    # the bootstrap seed moves intervals only: the summary (headline values) is listed, unchanged, with --all
    diff = json.loads(_run(["dvc", "metrics", "diff", "--all", "--json"], project).stdout)
    keys = {k for per_file in diff.values() for k in per_file}
    assert "ace_lora/chexpert_acc" in keys and not any(k.startswith("zeroshot/") for k in keys), diff
