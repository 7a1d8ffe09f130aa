# Names and paths shared by the rules; they mirror ace_lora.cli.stage_paths and dvc.yaml.
import os
import shutil
import subprocess
from pathlib import Path

RAW = config["paths"]["raw"]
PROCESSED = config["paths"]["processed"]
RESULTS = config["paths"]["results"]
DATASETS = ["mimic", "nih14", "chexpert", "rsna", "siim", "mhist", "lc25000"]
METHODS = list(config["methods"])
EVAL_DATASETS = config["evaluate"]["datasets"]
VALIDATION = config["train"]["validation"]
PROMPTS = f"{RESULTS}/prompts.json"
REPORT_MD = f"{RESULTS}/benchmarks.md"
REPORT_CSV = f"{RESULTS}/benchmarks.csv"
ACE = "python -m ace_lora --params params.yaml"

# params.yaml sections each stage reads (dvc.yaml `params:` lists the same).
STAGE_PARAMS = {
    "fetch": ["paths", "data"],
    "prepare": ["paths", "data"],
    "prompts": ["paths", "prompts", "evaluate.datasets", "train.validation"],
    "train": ["paths", "model", "loss", "methods", "train", "evaluate.ensemble"],  # validation: model selection
    "evaluate": ["paths", "model", "loss", "methods", "evaluate"],
    "report": ["paths"],
}

# Library code each stage runs (dvc.yaml lists the same files and folders as deps).
STAGE_CODE = {
    "fetch": ["ace_lora/data/fetch.py", "ace_lora/data/fixtures.py"],
    "prepare": ["ace_lora/data/prepare.py", "ace_lora/data/readers.py"],
    "prompts": ["ace_lora/prompts.py"],
    "train": ["ace_lora/train.py", "ace_lora/models", "ace_lora/losses.py"],
    "evaluate": ["ace_lora/eval", "ace_lora/models", "ace_lora/data/benchmarks.py"],
    "report": ["ace_lora/eval/report.py"],
}


def stage_params(stage):
    """The stage's params.yaml values: Snakemake reruns a job when they change."""
    values = {}
    for key in STAGE_PARAMS[stage]:
        node = config
        for part in key.split("."):
            node = node[part]
        values[key.replace(".", "_")] = node
    return values


def stage_code(stage):
    """Source files of the stage (folders expanded to their .py files, as Snakemake compares file times)."""
    files = []
    for path in map(Path, STAGE_CODE[stage]):
        files += sorted(map(str, path.glob("*.py"))) if path.is_dir() else [str(path)]
    return files


def timing(stage, pattern=""):
    return f"{RESULTS}/timings/{stage}{pattern}.tsv"


# ------------------------------------------------------------------------------------------- resources
# What each job asks of the scheduler (Snakemake's --cores/--resources locally, sbatch on SLURM): sized from the
# parameters, small for the demo and the paper's figures for the paper preset. GPUs are declared only where used, so
# `snakemake --resources gpu=N` runs at most N GPUs' worth of jobs at once.
PAPER = config["model"]["preset"] == "biomedclip"
REAL_DATA = config["data"]["source"] == "real"


def visible_gpus():
    """GPUs this machine shows the jobs: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`; 0 without either."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        ids = [i.strip() for i in os.environ["CUDA_VISIBLE_DEVICES"].split(",")]
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
