"""The registry is the one declaration of data sets and benchmarks: the DAG files, the CLI, the parameters and the
prompts agree with it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ace_lora import registry
from ace_lora.cli import build_parser
from ace_lora.config import PromptsConfig, schema
from ace_lora.prompts import DEFAULT_TEMPLATES, build_prompts

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(registry.DATASET_NAMES)
#: Names a data set wildcard must refuse: benchmarks that are not data sets, and strangers.
NOT_DATASETS = sorted(set(registry.BENCHMARKS) - set(NAMES)) + ["imagenet", "mimic2", "xrsna", ""]

# Snakemake's view of the data sets, through its Python API in a child process (the Snakefile's module state stays
# out of the test process): the DATASETS list the rules use and each rule's `dataset` wildcard constraint.
_SNAKEMAKE_DATASETS = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, Quietness, ResourceSettings

with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=Path("Snakefile"),
                            workdir=Path("."))._workflow
    print(json.dumps({"DATASETS": list(workflow.globals["DATASETS"]),
                      "constraints": {rule.name: rule.wildcard_constraints["dataset"] for rule in workflow.rules
                                      if "dataset" in rule.wildcard_constraints}}))
"""


@pytest.fixture(scope="module")
def snakemake_datasets() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _SNAKEMAKE_DATASETS], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_registry_declares_each_benchmark_once_under_its_data_set():
    assert len(NAMES) == len(set(NAMES)) and NAMES == [d.name for d in registry.DATASETS.values()]
    declared = [b for d in registry.DATASETS.values() for b in d.benchmarks]
    assert [b.name for b in declared] == list(registry.BENCHMARKS)
    for dataset in registry.DATASETS.values():
        assert registry.benchmarks_of(dataset.name) == [b.name for b in dataset.benchmarks]
        assert all(b.dataset == dataset.name for b in dataset.benchmarks), dataset.name
    with pytest.raises(registry.RegistryError, match="unknown data set 'imagenet'"):
        registry.get_dataset("imagenet")


@pytest.mark.parametrize("stage", ["fetch", "prepare"])
def test_dvc_yaml_foreach_lists_the_registry_data_sets(stage):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages[stage]["foreach"] == NAMES, f"dvc.yaml stage {stage}: foreach differs from ace_lora/registry.py"


def test_snakemake_data_sets_are_the_registry_ones(snakemake_datasets):
    assert snakemake_datasets["DATASETS"] == NAMES
    assert set(snakemake_datasets["constraints"]) == {"fetch", "prepare", "evaluate"}
    for rule, constraint in snakemake_datasets["constraints"].items():
        accepted = [name for name in NAMES + NOT_DATASETS if re.fullmatch(constraint, name)]
        assert accepted == NAMES, f"rule {rule}: its dataset wildcard accepts {accepted}, not the registry's data sets"


@pytest.mark.parametrize("stage", ["fetch", "prepare", "evaluate"])
def test_cli_offers_the_registry_data_sets(stage):
    subparsers = next(a for a in build_parser()._actions if isinstance(a.choices, dict) and stage in a.choices)
    dataset = next(a for a in subparsers.choices[stage]._actions if a.dest == "dataset")
    assert list(dataset.choices) == NAMES


@pytest.mark.parametrize("name", list(registry.BENCHMARKS))
def test_default_prompts_cover_every_class_of_every_benchmark(name):
    benchmark = registry.BENCHMARKS[name]
    prompts = build_prompts(PromptsConfig(), [name])[name]
    assert list(prompts) == list(benchmark.prompt_classes)
    assert set(benchmark.classes) <= set(prompts)
    templates = DEFAULT_TEMPLATES[benchmark.domain]
    for label, texts in prompts.items():
        assert texts == [t.format(p) for t in templates for p in benchmark.phrases[label]], (name, label)


def test_negative_phrase_follows_the_registry_negative_class():
    negatives = {n: b.negative_class for n, b in registry.BENCHMARKS.items() if b.negative_class}
    assert negatives, "no benchmark declares a negative class"
    ours = build_prompts(PromptsConfig(negative="no_acute_findings"), list(negatives))
    for name, label in negatives.items():
        assert ours[name][label][0].endswith(f" {registry.NEGATIVE_PHRASES['no_acute_findings']}."), name


@pytest.mark.parametrize(
    "path", ["params.yaml", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.yaml"))]
)
def test_parameter_files_name_registry_data_sets(path):
    params = yaml.safe_load((ROOT / path).read_text())
    evaluated = params["evaluate"]["datasets"]
    assert evaluated and set(evaluated) <= set(NAMES), f"{path}: evaluate.datasets {evaluated}"
    assert all(registry.DATASETS[d].role == "test" for d in evaluated), f"{path}: a training/validation set is tested"
    validation = params["train"]["validation"]
    assert validation in NAMES and registry.DATASETS[validation].role != "test", f"{path}: train.validation"


def test_parameter_schema_allows_exactly_the_registry_data_sets_of_each_role():
    properties = schema()["properties"]
    tested = properties["evaluate"]["properties"]["datasets"]["items"]["enum"]
    assert tested == [d.name for d in registry.DATASETS.values() if d.role == "test"]
    selection = properties["train"]["properties"]["validation"]["enum"]
    assert set(selection) == {d.name for d in registry.DATASETS.values() if d.role != "test"}
