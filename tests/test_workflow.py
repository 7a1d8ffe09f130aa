"""The DAG: Snakemake and DVC declare the same stages; the demo runs end to end; reruns are minimal."""

from __future__ import annotations

import ast
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from workflow_support import ROOT, SMALL, merge_params, project_copy, run_command

# ------------------------------------------------------------------------------------------ DAG in sync


def _strip_redirect(cmd: str) -> str:
    return re.sub(r"\s*(2>|>)\s*\S+(\s*2>&1)?", "", cmd).strip()


# Snakemake's DAG through its Python API (the jobs of a forced run), printed as JSON by a child process so the
# Snakefile's module state stays out of the test process.
_SNAKEMAKE_DAG = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import DAGSettings, OutputSettings, Quietness, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow_api = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                                workdir=Path("."))
    workflow_api.dag(dag_settings=DAGSettings(forceall=True))
    workflow = workflow_api._workflow
    workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
    workflow._build_dag()
    print(json.dumps([{"rule": job.rule.name, "shell": job.shellcmd, "input": list(map(str, job.input)),
                       "output": list(map(str, job.output))} for job in workflow.dag.jobs]))
"""


def _snakemake_jobs(cwd: Path) -> dict[str, tuple[frozenset, frozenset]]:
    """Every job of Snakemake's DAG: shell command -> (inputs, outputs)."""
    jobs = json.loads(run_command([sys.executable, "-c", _SNAKEMAKE_DAG], cwd).stdout.strip().splitlines()[-1])
    return {
        _strip_redirect(job["shell"]): (frozenset(job["input"]), frozenset(job["output"]))
        for job in jobs
        if job["shell"]
    }  # the `all` target runs no command


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


# dvc.yaml's prompts stage also lists `methods`: DVC then checks a changed method list before any train/evaluate
# command names the method in a shell (Snakemake checks params.yaml in the Snakefile itself).
DVC_ONLY_PARAMS = {"prompts": {"methods"}}


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
        expected = set(_smk_constant("STAGE_PARAMS")[stage]) | DVC_ONLY_PARAMS.get(stage, set())
        assert expected == params, f"{stage}: params differ"


# The outputs of each stage command as ace_lora.cli.stage_paths names them; the report also writes the two plot
# folders of write_plot_data under stage_paths' "plots".
STAGE_OUTPUTS = {
    "fetch": ["fetched"],
    "prepare": ["processed"],
    "prompts": ["prompts"],
    "train": ["train", "train_metrics", "train_log", "train_val_log"],
    "evaluate": ["evaluate", "metrics"],
    "report": ["report_md", "report_csv", "summary", "report_dir"],
}
REPORT_PLOTS = ("roc", "confusion")


def _cli_outputs(params, cmd: str) -> frozenset[str]:
    """What ``stage_paths`` names as the outputs of ``python -m ace_lora --params params.yaml <stage> [args]``."""
    from ace_lora.cli import stage_paths

    stage, *args = [word for word in cmd.split()[5:] if not word.startswith("--")]
    method = args[0] if stage in ("train", "evaluate") else None
    dataset = args[-1] if stage in ("fetch", "prepare", "evaluate") else None
    paths = stage_paths(params, method=method, dataset=dataset)
    outputs = {paths[key] for key in STAGE_OUTPUTS[stage]}
    if stage == "report":
        outputs |= {paths["plots"] / kind for kind in REPORT_PLOTS}
    return frozenset(map(str, outputs))


def test_dag_outputs_are_the_cli_stage_paths(tmp_path):
    """Paths are spelled in cli.stage_paths, common.smk and dvc.yaml: all three agree, for other paths than the
    defaults too."""
    from ace_lora.config import load_params

    project = project_copy(tmp_path, {"paths": {"raw": "store/raw", "processed": "store/prepared", "results": "out"}})
    params = load_params(project / "params.yaml")
    snake, dvc = _snakemake_jobs(project), _dvc_stages(project)
    assert set(snake) == set(dvc), f"commands differ: {set(snake) ^ set(dvc)}"
    assert {cmd.split()[5] for cmd in snake} == set(STAGE_OUTPUTS)
    for cmd, (_, outputs) in snake.items():
        expected = _cli_outputs(params, cmd)
        assert outputs == expected, f"Snakefile, {cmd}: outputs {sorted(outputs ^ expected)} differ from stage_paths"
        outs = dvc[cmd][1]
        assert outs == expected, f"dvc.yaml, {cmd}: outs {sorted(outs ^ expected)} differ from stage_paths"


def test_snakemake_lint_is_clean():
    proc = run_command([sys.executable, "-m", "snakemake", "--lint"], ROOT, check=False)
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout[-6000:]
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_dag_covers_every_method_and_dataset():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmds = set(_dvc_stages(ROOT))
    for method in params["methods"]:
        assert f"python -m ace_lora --params params.yaml train {method} --resume" in cmds
        for dataset in params["evaluate"]["datasets"]:
            assert f"python -m ace_lora --params params.yaml evaluate {method} {dataset}" in cmds


# ----------------------------------------------------------------------------------- params validation


def test_schema_file_is_generated_from_the_config():
    proc = run_command(
        [sys.executable, "-m", "ace_lora", "schema", "--check", "workflow/schemas/params.schema.json"],
        ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_configfile_and_config_are_refused_with_how_to_switch(tmp_path):
    project = project_copy(tmp_path)
    for extra in (["--configfile", "configs/paper.yaml"], ["--config", "train={lr: 0.1}"]):
        (project / "configs").mkdir(exist_ok=True)
        shutil.copy(ROOT / "configs/paper.yaml", project / "configs/paper.yaml")
        proc = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "1", *extra], project, check=False)
        assert proc.returncode != 0
        assert "cp configs/paper.yaml params.yaml" in proc.stdout + proc.stderr
    run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], project)  # params.yaml alone is fine


def test_bad_params_fail_before_any_stage_naming_the_key(tmp_path):
    project = project_copy(tmp_path, {"model": {"hgnn": {"towers": "sideways"}}})
    proc = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "1"], project, check=False)
    assert proc.returncode != 0
    assert "sideways" in proc.stdout + proc.stderr and "towers" in proc.stdout + proc.stderr
    proc = run_command([sys.executable, "-m", "ace_lora", "prompts"], project, check=False)
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
    proc = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    params = yaml.safe_load((snakemake_demo / "params.yaml").read_text())
    params["evaluate"]["bootstrap"] = 30
    (snakemake_demo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo).stdout
    rules = set(re.findall(r"^rule (\w+):", out, re.M))
    assert rules == {"evaluate", "report", "all"}, rules
    params["evaluate"]["ensemble"] = "token_average"  # also the validation metric of model selection
    (snakemake_demo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], snakemake_demo).stdout
    assert set(re.findall(r"^rule (\w+):", out, re.M)) == {"train", "evaluate", "report", "all"}


def test_dvc_repro_demo_then_metrics_diff(tmp_path):
    override = merge_params(
        SMALL,
        {"methods": {"base": {"train": False, "lora": {"enabled": False}, "hgnn": {"towers": "none"}}, "ace_lora": {}}},
    )
    project = project_copy(tmp_path, override)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"] = override["methods"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "demo"],
    ):
        run_command(cmd, project)
    run_command(["dvc", "repro"], project)
    assert (project / "results/benchmarks.md").is_file()
    again = run_command(["dvc", "repro"], project).stdout
    assert "Running stage" not in again
    run_command(["git", "add", "-A"], project)
    run_command(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], project)
    params["evaluate"]["bootstrap"] = 30
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run_command(["dvc", "repro", "--dry"], project).stdout
    stages = set(re.findall(r"Running stage '([\w@-]+)'", dry))
    assert stages and all(s.startswith(("evaluate@", "report")) for s in stages), stages
    params["evaluate"]["ensemble"] = "token_average"  # also the validation metric of model selection
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dry = run_command(["dvc", "repro", "--dry"], project).stdout
    assert "train@ace_lora" in set(re.findall(r"Running stage '([\w@-]+)'", dry))
    params["evaluate"].update(bootstrap=SMALL["evaluate"]["bootstrap"], ensemble="mean")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_command(["dvc", "exp", "run", "-S", f"train.lr={params['train']['lr'] * 3}"], project)
    # the summary metrics (one headline value per method and benchmark, and each trained method's validation score)
    diff = json.loads(run_command(["dvc", "metrics", "diff", "--json"], project).stdout)
    moved = {key for per_file in diff.values() for key, value in per_file.items() if value.get("diff")}
    assert "ace_lora/val_nih14_auc" in moved, f"no training delta: {diff}"
    assert any(k.startswith("ace_lora/") and "/val_" not in k for k in moved), f"no evaluation delta: {diff}"
    assert not any(k.startswith("base/") for k in moved), f"the untrained base moved: {diff}"
    again = run_command(["dvc", "repro"], project).stdout
    assert "Running stage" not in again  # an identical rerun does nothing
    current = yaml.safe_load((project / "params.yaml").read_text())
    for name in BAD_METHOD_NAMES:  # refused by the prompts stage's params check before any command names it
        bad = yaml.safe_load((project / "params.yaml").read_text())
        bad["methods"][name] = {}
        _write_params(project, bad)
        before = {p for p in project.rglob("*") if ".dvc" not in p.parts}
        proc = run_command(["dvc", "repro"], project, check=False)
        assert proc.returncode != 0, proc.stdout
        _assert_nothing_ran(project, before)
        _write_params(project, current)


def _write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _small_params() -> dict:
    return merge_params(yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL)


BAD_METHOD_NAMES = ["x`touch PWNED`", "../../../escaped"]


def _assert_nothing_ran(project: Path, before: set[Path]) -> None:
    assert not list(project.parent.rglob("PWNED")) and not (project / "PWNED").exists()
    assert not list(project.parent.parent.glob("escaped*")) and not list(project.parent.glob("escaped*"))
    assert not (project / "results/train/x`touch PWNED`").exists()
    new = {p for p in project.rglob("*") if ".snakemake" not in p.parts and ".dvc" not in p.parts} - before
    assert new <= {project / "params.yaml"}, sorted(map(str, new))


def test_snakemake_training_param_change_retrains_and_identical_rerun_does_nothing(snakemake_demo):
    """Only the one target's chain runs: train ace_lora (new lr), evaluate it on CheXpert."""
    params = _small_params()
    _write_params(snakemake_demo, params)
    target = "results/metrics/evaluate/ace_lora/chexpert.json"
    before_train = (snakemake_demo / "results/metrics/train/ace_lora.json").read_text()
    before_eval = (snakemake_demo / target).read_text()
    assert (
        "Nothing to be done"
        in run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "2", target], snakemake_demo).stdout
    )
    params["train"]["lr"] = params["train"]["lr"] * 3
    _write_params(snakemake_demo, params)
    run_command([sys.executable, "-m", "snakemake", "--cores", "2", target], snakemake_demo)
    assert (snakemake_demo / "results/metrics/train/ace_lora.json").read_text() != before_train
    assert (snakemake_demo / target).read_text() != before_eval, "a new lr must reach the evaluation metrics"
    again = run_command([sys.executable, "-m", "snakemake", "-n", "--cores", "2", target], snakemake_demo)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_snakemake_removed_method_leaves_the_report(snakemake_demo):
    params = _small_params()
    del params["methods"]["lora_only"]
    _write_params(snakemake_demo, params)
    dry = run_command(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "results/benchmarks.md"], snakemake_demo
    )
    assert "report" in set(re.findall(r"^rule (\w+):", dry.stdout, re.M))
    run_command([sys.executable, "-m", "ace_lora", "report"], snakemake_demo)  # the report job's command
    table = (snakemake_demo / "results/benchmarks.md").read_text()
    assert "lora_only" not in table and all(m in table for m in params["methods"]), table


@pytest.mark.parametrize("name", BAD_METHOD_NAMES)
def test_snakemake_refuses_a_method_name_that_is_not_a_word(snakemake_demo, name):
    params = _small_params()
    params["methods"][name] = {}
    _write_params(snakemake_demo, params)
    before = {p for p in snakemake_demo.rglob("*") if ".snakemake" not in p.parts}
    proc = run_command([sys.executable, "-m", "snakemake", "--cores", "1"], snakemake_demo, check=False)
    assert proc.returncode != 0 and "methods" in proc.stdout + proc.stderr
    _assert_nothing_ran(snakemake_demo, before)
    _write_params(snakemake_demo, _small_params())
