# Names and paths shared by the rules; they mirror ace_lora.cli.stage_paths and dvc.yaml.
import os
import shutil
import subprocess
from pathlib import Path

from ace_lora.registry import DATASET_NAMES

RAW = config["paths"]["raw"]
PROCESSED = config["paths"]["processed"]
RESULTS = config["paths"]["results"]
DATASETS = list(DATASET_NAMES)  # ace_lora/registry.py; dvc.yaml lists the same (tests/test_registry.py)
METHODS = list(config["methods"])
EVAL_DATASETS = config["evaluate"]["datasets"]
VALIDATION = config["train"]["validation"]
PROMPTS = f"{RESULTS}/prompts.json"
REPORT_MD = f"{RESULTS}/benchmarks.md"
REPORT_CSV = f"{RESULTS}/benchmarks.csv"
ACE = "python -m ace_lora --params params.yaml"  # rules pass it as params.ace (snakemake --lint)
ENV = "../envs/ace-lora.yaml"  # conda environment of every rule (snakemake --sdm conda)

# params.yaml sections each stage reads (dvc.yaml `params:` lists the same).
STAGE_PARAMS = {
    "fetch": ["paths", "data"],
    "prepare": ["paths", "data"],
    "prompts": ["paths", "prompts", "evaluate.datasets", "train.validation"],
    "train": ["paths", "model", "loss", "methods", "train", "evaluate.ensemble"],  # validation: model selection
    "evaluate": ["paths", "model", "loss", "methods", "evaluate"],
    "report": ["paths", "methods", "evaluate.datasets"],  # the table has exactly these rows and columns
}

# Library code each stage runs: the import closure of `python -m ace_lora <stage>` (tests/test_dag_deps.py computes
# it from the code and fails when a module is missing here or in dvc.yaml, which lists the same files and folders).
CLI_CODE = ["ace_lora/__init__.py", "ace_lora/__main__.py", "ace_lora/cli.py", "ace_lora/config.py", "ace_lora/io.py",
            "ace_lora/registry.py"]
FETCH_CODE = ["ace_lora/data/__init__.py", "ace_lora/data/fetch.py", "ace_lora/data/readers.py",
              "ace_lora/demo/__init__.py", "ace_lora/demo/dicom.py", "ace_lora/demo/painters.py",
              "ace_lora/demo/reports.py", "ace_lora/demo/writers.py"]
PREPARE_CODE = ["ace_lora/data/__init__.py", "ace_lora/data/collectors.py", "ace_lora/data/prepare.py",
                "ace_lora/data/readers.py", "ace_lora/progress.py"]
PROMPTS_CODE = ["ace_lora/data/__init__.py", "ace_lora/data/benchmarks.py", "ace_lora/prompts.py"]
MODEL_CODE = ["ace_lora/data/__init__.py", "ace_lora/data/benchmarks.py", "ace_lora/data/dataset.py", "ace_lora/eval",
              "ace_lora/models", "ace_lora/assets/tiny_vocab.txt", "ace_lora/distributed.py", "ace_lora/progress.py",
              "ace_lora/prompts.py"]
STAGE_CODE = {
    "fetch": CLI_CODE + FETCH_CODE,
    "prepare": CLI_CODE + PREPARE_CODE,
    "prompts": CLI_CODE + PROMPTS_CODE,
    "train": CLI_CODE + MODEL_CODE + ["ace_lora/losses.py", "ace_lora/provenance.py", "ace_lora/train.py"],
    "evaluate": CLI_CODE + MODEL_CODE + ["ace_lora/plots.py"],  # the stage draws the overlays evaluation returns
    "report": CLI_CODE + ["ace_lora/plots.py", "ace_lora/report.py"],
}


def stage_params(stage):
    """The stage's params.yaml values, one param per key named with `_` for `.` (`evaluate_datasets`), looked up
    with Snakemake's lookup(): Snakemake reruns a job when they change."""
    return {key.replace(".", "_"): lookup(dpath=key.replace(".", "/"), within=config) for key in STAGE_PARAMS[stage]}


def stage_code(stage):
    """Source files of the stage (folders expanded to their .py files, as Snakemake compares file times)."""
    files = []
    for path in map(Path, STAGE_CODE[stage]):
        files += sorted(map(str, path.glob("*.py"))) if path.is_dir() else [str(path)]
    return files


def timing(stage, pattern=""):
    """Benchmark file of a job: results/timings/<stage>[/<pattern>].tsv."""
    return os.path.join(RESULTS, "timings", *([stage, pattern] if pattern else [stage])) + ".tsv"


# ------------------------------------------------------------------------------------------- resources
# What each job asks of the scheduler (Snakemake's --cores/--resources locally, sbatch on SLURM): sized from the
# parameters, small for the demo and the paper's figures for the paper preset. GPUs are declared only where used, so
# `snakemake --resources gpu=N` runs at most N GPUs' worth of jobs at once.
PAPER = config["model"]["preset"] == "biomedclip"
REAL_DATA = config["data"]["source"] == "real"


def visible_gpus():
    """GPUs this machine shows the jobs: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`; 0 without either."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # optional: no envvars directive
    if visible is not None:
        ids = [i.strip() for i in visible.split(",")]
        return len([i for i in ids if i and not i.startswith("-")])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def train_gpus():
    """GPUs of one training job: train.processes (one per GPU) when set, else every visible GPU; 0 on the CPU."""
    train = config["train"]
    visible = visible_gpus()
    if train["device"] == "cpu" or (train["device"] == "auto" and visible == 0):
        return 0
    return train["processes"] or max(visible, 1)


EVALUATE_GPUS = 1 if visible_gpus() > 0 else 0  # the evaluate stage uses CUDA whenever it sees a GPU
