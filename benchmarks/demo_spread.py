"""Spread of the demo's results over training seeds: mean ± sd (min–max) per method and headline metric.

For each seed k in 1..S the demo pipeline runs with ``train.seed = k`` and everything else from the params file,
in its own results folder ``<out>/seed<k>/`` (its own params file there), all seeds sharing one prepared data
folder (``paths.processed`` of the params file; fetched and prepared first when missing). The stages are the
pipeline's own (``python -m ace_lora --params <out>/seed<k>/params.yaml prompts|train|evaluate|report``), run in
this process (or one process per seed with ``--jobs``); ``train --resume`` reuses a seed's finished runs, so a
rerun of this script only computes what is missing.

    python benchmarks/demo_spread.py                      # 5 seeds, every method of params.yaml
    python benchmarks/demo_spread.py --seeds 3 --methods ace_lora,lora_only --jobs 2 --out results/spread

Writes ``<out>/spread.md`` and ``<out>/spread.csv`` (per method x benchmark x protocol: n, mean, sd, min, max of the
headline metric, in percent) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from ace_lora.cli import main as ace_lora
from ace_lora.config import load_params, to_dict
from ace_lora.io import atomic_write_text

COLUMNS = ["method", "benchmark", "protocol", "metric", "n", "mean", "sd", "min", "max"]


def run_stage(params_file: Path, *args: str) -> None:
    """One pipeline stage through the CLI; a failure names the stage and the params file."""
    if ace_lora(["--params", str(params_file), *args]) != 0:
        raise RuntimeError(f"stage `{' '.join(args)}` failed for {params_file} (its message is above)")


def prepare_shared_data(params_file: Path, params) -> None:
    """Fetch and prepare every data set the runs read, once, into the shared ``paths.processed``."""
    datasets = dict.fromkeys(["mimic", params.train.validation, *params.evaluate.datasets])
    for name in datasets:
        if not (Path(params.paths.processed) / name / "manifest.csv").is_file():
            run_stage(params_file, "fetch", name)
            run_stage(params_file, "prepare", name)


def seed_params(base: dict, seed: int, out: Path, methods: list[str]) -> Path:
    """``<out>/seed<k>/params.yaml``: the base params with this training seed, results folder and methods."""
    params = copy.deepcopy(base)
    params["paths"]["results"] = str(out / f"seed{seed}")
    params["train"]["seed"] = seed
    params["methods"] = {m: base["methods"][m] for m in methods}
    path = out / f"seed{seed}" / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(params, sort_keys=False))
    return path


def run_seed(params_file: Path) -> Path:
    """The demo pipeline for one seed: prompts, train and evaluate every method, report; returns the results."""
    params = load_params(params_file)
    run_stage(params_file, "prompts")
    for method in params.methods:
        run_stage(params_file, "train", method, "--resume")
        for dataset in params.evaluate.datasets:
            run_stage(params_file, "evaluate", method, dataset)
    run_stage(params_file, "report")
    return Path(params.paths.results)


def headline_values(results: Path, methods: list[str], datasets: list[str]) -> pd.DataFrame:
    """The headline metric of every benchmark and protocol of one results folder, in percent."""
    from ace_lora.report import HEADLINE_METRICS, collect_metrics

    frame = collect_metrics(results / "metrics" / "evaluate", methods, datasets)
    frame = frame[frame["metric"] == frame["benchmark"].map(HEADLINE_METRICS)]
    return frame.assign(value=100 * frame["value"])[["method", "benchmark", "protocol", "metric", "value"]]


def summarize(per_seed: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """n, mean, sd (n-1), min and max over seeds per method x benchmark x protocol x metric."""
    frame = pd.concat([f.assign(seed=s) for s, f in per_seed.items()], ignore_index=True)
    stats = (
        frame.groupby(["method", "benchmark", "protocol", "metric"], sort=True)["value"]
        .agg(n="count", mean="mean", sd="std", min="min", max="max")
        .reset_index()
    )
    return stats[COLUMNS]


def to_markdown(stats: pd.DataFrame, seeds: list[int]) -> str:
    lines = [
        f"Demo spread over training seeds {', '.join(map(str, seeds))} (headline metric, percent): "
        "mean ± sd (min–max).",
        "",
        "| method | benchmark | protocol | metric | n | mean ± sd | min–max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in stats.itertuples():
        sd = "n/a" if pd.isna(r.sd) else f"{r.sd:.1f}"
        lines.append(
            f"| {r.method} | {r.benchmark} | {r.protocol} | {r.metric} | {r.n} | {r.mean:.1f} ± {sd} | "
            f"{r.min:.1f}–{r.max:.1f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="base parameters (default: the demo's params.yaml)")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds 1..S (default 5)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: every method of --params)")
    ap.add_argument("--out", default="results/spread", help="one results folder per seed, and the tables")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel (one process each)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params_file, out = Path(args.params), Path(args.out)
    base = load_params(params_file)
    methods = args.methods.split(",") if args.methods else list(base.methods)
    unknown = [m for m in methods if m not in base.methods]
    if unknown:
        sys.exit(f"demo_spread: --methods {unknown} not in {params_file} (defined: {', '.join(base.methods)})")
    prepare_shared_data(params_file, base)
    seeds = list(range(1, args.seeds + 1))
    files = [seed_params(to_dict(base), s, out, methods) for s in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_seed, files))
    else:
        results = [run_seed(f) for f in files]
    stats = summarize({s: headline_values(r, methods, list(base.evaluate.datasets)) for s, r in zip(seeds, results)})
    text = to_markdown(stats, seeds)
    atomic_write_text(out / "spread.md", text)
    atomic_write_text(out / "spread.csv", stats.to_csv(index=False, float_format="%.4f"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
