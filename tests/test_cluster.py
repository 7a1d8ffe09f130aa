"""Scheduling: the rules declare the GPUs they use, and the SLURM profile runs the demo on a real SLURM.

The SLURM test is opt-in (marker ``slurm``, deselected by default in pyproject.toml): it needs a running SLURM whose
default partition takes a 2-CPU job, for example the one-node SLURM of ``workflow/scripts/slurm_local.sh``::

    bash workflow/scripts/slurm_local.sh install && bash workflow/scripts/slurm_local.sh start
    HF_HUB_OFFLINE=1 python -m pytest -m slurm tests/test_cluster.py
    bash workflow/scripts/slurm_local.sh stop
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_support import ENV, ROOT, SMALL, project_copy

PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"


def _dry_run_resources(project: Path, env: dict) -> dict[str, set[str]]:
    """rule -> the set of its jobs' resource lines, from a Snakemake dry run."""
    out = _run_env([sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "2"], project, env)
    found: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            found.setdefault(rule.group(1), set()).add(res.group(1))
    return found


def _run_env(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _gpu(lines: set[str]) -> set[int]:
    return {int(m.group(1)) if (m := re.search(r"\bgpu=(\d+)", line)) else 0 for line in lines}


def test_rules_declare_the_gpus_they_use(tmp_path):
    """Without a GPU nothing asks for one; with two visible GPUs training asks for both (train.processes: null) or
    train.processes of them, and each evaluation for one; memory follows the preset (demo: small)."""
    project = project_copy(tmp_path / "p")
    no_gpu = _dry_run_resources(project, {**ENV, "CUDA_VISIBLE_DEVICES": ""})
    assert _gpu(no_gpu["train"]) == _gpu(no_gpu["evaluate"]) == {0}
    assert all(
        re.search(r"mem_mb=(\d+)", line) and int(re.search(r"mem_mb=(\d+)", line).group(1)) <= 2000
        for lines in no_gpu.values()
        for line in lines
        if "mem_mb" in line
    )
    two = _dry_run_resources(project, {**ENV, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert _gpu(two["train"]) == {2} and _gpu(two["evaluate"]) == {1} and _gpu(two["prepare"]) == {0}
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["processes"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _gpu(_dry_run_resources(project, {**ENV, "CUDA_VISIBLE_DEVICES": "0,1"})["train"]) == {1}


def test_slurm_profile_keeps_cluster_settings_in_one_place():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm" and "slurm_partition" in profile["default-resources"]
    assert "mem_mb" not in str(profile["set-resources"]) and "runtime" not in str(profile["set-resources"])
    assert "gpu" not in profile["set-resources"]["train"]  # train.processes in params.yaml decides
    text = PROFILE.read_text()
    for note in ("slurm-status-command: squeue", "slurm_account", "SIGINT", "REPLACES"):
        assert note in text, note
    rules = (ROOT / "workflow" / "rules" / "data.smk").read_text()
    assert re.search(r"^localrules:\s*\n\s+fetch,", rules, re.M)


# ------------------------------------------------------------------------------------------------- SLURM


def _default_partition() -> str | None:
    if shutil.which("sinfo") is None:
        return None
    proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    for line in proc.stdout.splitlines():
        name, avail = line.split()
        if name.endswith("*") and avail == "up":
            return name.rstrip("*")
    return None


def _cluster_profile(dest: Path, partition: str) -> Path:
    """The shipped profile with its cluster settings set for this SLURM: partition, status command (no accounting
    here), CPUs per job; no GPU partition, no GPUs."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"]["slurm_partition"] = partition
    profile["max-threads"] = 2
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 5
    profile["slurm-logdir"] = str(dest.parent / "slurm_logs")
    profile["slurm-keep-successful-logs"] = True
    for rule in profile["set-resources"].values():
        rule.pop("slurm_partition", None)
        rule.pop("gpu", None)
    # an empty entry is an error ("--set-resources: expected at least one argument")
    profile["set-resources"] = {rule: res for rule, res in profile["set-resources"].items() if res}
    if not profile["set-resources"]:
        del profile["set-resources"]
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def _snakemake(cmd: list[str], cwd: Path, timeout: int) -> float:
    """Run Snakemake; on timeout stop it with SIGINT (it cancels its SLURM jobs; SIGTERM would not stop it)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{out[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{out[-6000:]}"
    return time.monotonic() - start


@pytest.mark.slurm
def test_slurm_profile_runs_the_small_demo_like_a_local_run(tmp_path):
    partition = _default_partition()
    if partition is None:
        pytest.skip(
            "no SLURM with an available default partition (sinfo): start one with "
            "`bash workflow/scripts/slurm_local.sh install && bash workflow/scripts/slurm_local.sh start`"
        )
    local = project_copy(tmp_path / "local", SMALL)
    cluster = project_copy(tmp_path / "cluster", SMALL)
    profile = _cluster_profile(tmp_path / "profile" / "slurm", partition)
    local_s = _snakemake([sys.executable, "-m", "snakemake", "--cores", "2"], local, 3600)
    cluster_s = _snakemake([sys.executable, "-m", "snakemake", "--profile", str(profile)], cluster, 3600)
    print(f"small demo: local {local_s:.0f} s, through SLURM {cluster_s:.0f} s")
    for name in ("benchmarks.md", "benchmarks.csv"):
        assert (cluster / "results" / name).read_bytes() == (local / "results" / name).read_bytes(), name
    logs = tmp_path / "profile" / "slurm_logs"
    ran = {p.name.removeprefix("rule_") for p in logs.iterdir()} if logs.is_dir() else set()
    assert {"prepare", "train", "evaluate", "report"} <= ran, ran  # every rule went through sbatch ...
    assert "fetch" not in ran  # ... except the local one
