# Names and paths shared by the rules; they mirror ace_lora.cli.stage_paths and dvc.yaml.
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
    "report": ["paths", "methods", "evaluate.datasets"],
}

# Library code each stage runs (dvc.yaml lists the same files and folders as deps).
STAGE_CODE = {
    "fetch": ["ace_lora/data/fetch.py", "ace_lora/data/fixtures.py"],
    "prepare": ["ace_lora/data/prepare.py", "ace_lora/data/readers.py"],
    "prompts": ["ace_lora/prompts.py"],
    "train": ["ace_lora/train.py", "ace_lora/models", "ace_lora/losses.py"],
    "evaluate": ["ace_lora/eval", "ace_lora/models", "ace_lora/data/benchmarks.py", "ace_lora/plots.py"],
    "report": ["ace_lora/eval/report.py", "ace_lora/plots.py"],
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
