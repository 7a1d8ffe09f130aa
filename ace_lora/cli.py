"""Pipeline stages of ace-lora: python -m ace_lora <stage> (or ace-lora <stage>), one per DAG stage.

Each stage parses its arguments, loads ``params.yaml``, calls one library function and writes its outputs at the
paths the DAG (``Snakefile`` and ``dvc.yaml``) declares; :func:`stage_paths` is the one place those paths are named.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from ace_lora.config import Params, ParamsError, load_params, parameter_table, schema
from ace_lora.io import atomic_dir, atomic_write_json, atomic_write_text
from ace_lora.registry import DATASET_NAMES

log = logging.getLogger("ace_lora")

DATASETS = DATASET_NAMES  # the choices of fetch, prepare and evaluate (ace_lora/registry.py)


def stage_paths(params: Params, method: str | None = None, dataset: str | None = None) -> dict[str, Path]:
    """Output paths of every stage, from ``params.paths``."""
    raw, processed, results = (Path(p) for p in (params.paths.raw, params.paths.processed, params.paths.results))
    out = {
        "prompts": results / "prompts.json",
        "report_md": results / "benchmarks.md",
        "report_csv": results / "benchmarks.csv",
        "summary": results / "metrics" / "summary.json",
        "plots": results / "plots",
        "report_dir": results / "report",
    }
    if dataset:
        out["fetched"] = raw / f"{dataset}.fetched.json"
        out["processed"] = processed / dataset
    if method:
        out["train"] = results / "train" / method
        out["adapter"] = results / "train" / method / "adapter"
        out["checkpoints"] = results / "checkpoints" / method
        out["train_metrics"] = results / "metrics" / "train" / f"{method}.json"
        out["train_log"] = results / "plots" / "train" / f"{method}.csv"
        out["train_val_log"] = results / "plots" / "train" / f"{method}_val.csv"  # written beside train_log
    if method and dataset:
        out["evaluate"] = results / "evaluate" / method / dataset
        out["metrics"] = results / "metrics" / "evaluate" / method / f"{dataset}.json"
    return out


# ------------------------------------------------------------------------------------------------ stages


def cmd_fetch(args: argparse.Namespace, params: Params) -> None:
    from ace_lora.data.fetch import fetch_dataset

    record = fetch_dataset(args.dataset, Path(params.paths.raw), params.data)
    atomic_write_json(stage_paths(params, dataset=args.dataset)["fetched"], record)


def cmd_prepare(args: argparse.Namespace, params: Params) -> None:
    from ace_lora.data.prepare import prepare_dataset

    out = stage_paths(params, dataset=args.dataset)["processed"]
    report = prepare_dataset(args.dataset, Path(params.paths.raw), out, params.data)
    log.info("prepared %s: %s", args.dataset, json.dumps(report.get("counts", {}), default=str)[:500])


def cmd_prompts(args: argparse.Namespace, params: Params) -> None:
    from ace_lora.data.benchmarks import benchmarks_of
    from ace_lora.prompts import build_prompts, write_prompts

    benchmarks = [b for d in [*params.evaluate.datasets, params.train.validation] for b in benchmarks_of(d)]
    prompts = build_prompts(params.prompts, benchmarks)
    path = write_prompts(prompts, stage_paths(params)["prompts"])
    for name, classes in prompts.items():
        log.info("prompts %s: %d classes, %d prompts", name, len(classes), sum(map(len, classes.values())))
    log.info(
        "wrote prompts of %d benchmarks to %s (custom templates: %s; custom class names: %s)",
        len(prompts),
        path,
        ", ".join(params.prompts.templates) or "none",
        ", ".join(params.prompts.class_names) or "none",
    )


def _training_processes(params: Params) -> int:
    import torch

    if params.train.processes is not None:
        return params.train.processes
    return max(torch.cuda.device_count(), 1)


def cmd_train(args: argparse.Namespace, params: Params) -> None:
    """Train one method; with N > 1 processes the stage relaunches itself under torchrun (one code path)."""
    import os
    import subprocess

    from ace_lora.train import train

    processes = _training_processes(params)
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "ace_lora",
            "--params",
            args.params,
            "train",
            args.method,
        ] + (["--resume"] if args.resume else [])
        log.info("launching %d training processes: %s", processes, " ".join(cmd))
        code = subprocess.run(cmd).returncode
        if code:
            raise RuntimeError(f"{processes} training processes failed (exit {code}); see their messages above")
        return
    paths = stage_paths(params, method=args.method)
    train(
        params,
        args.method,
        paths["train"],
        resume=args.resume,
        checkpoint_dir=paths["checkpoints"],
        metrics_path=paths["train_metrics"],
        log_path=paths["train_log"],
    )


def cmd_evaluate(args: argparse.Namespace, params: Params) -> None:
    from ace_lora.data.benchmarks import benchmarks_of, load_benchmark
    from ace_lora.distributed import choose_device
    from ace_lora.eval.zeroshot import evaluate_benchmark
    from ace_lora.models import load_adapter
    from ace_lora.plots import save_overlays, write_plot_csvs
    from ace_lora.prompts import read_prompts

    paths = stage_paths(params, method=args.method, dataset=args.dataset)
    device = choose_device(args.device)
    model = load_adapter(paths["adapter"], device=device)
    log.info("evaluate %s on %s (%s): adapter %s", args.method, args.dataset, device, paths["adapter"])
    metrics: dict = {}
    with atomic_dir(paths["evaluate"]) as out:
        for name in benchmarks_of(args.dataset):
            spec, manifest = load_benchmark(name, Path(params.paths.processed))
            prompts = read_prompts(paths["prompts"], spec.name, spec.classes)
            values, tables, overlays = evaluate_benchmark(
                model, spec, manifest, paths["processed"], prompts, params.evaluate, device, source=paths["prompts"]
            )
            metrics.update(values)
            write_plot_csvs(tables, out, prefix=f"{name}_")
            save_overlays(overlays, out)
            log.info("%s: %d test images (%s task); %s", name, len(manifest), spec.task, _headline(values))
    atomic_write_json(paths["metrics"], metrics)
    log.info(
        "wrote %d metrics to %s and %d files to %s",
        len(metrics),
        paths["metrics"],
        len(list(paths["evaluate"].iterdir())),
        paths["evaluate"],
    )


def _headline(values: dict) -> str:
    """The main metrics of one benchmark for the log: ``zeroshot/rsna/auroc=0.871 [0.85, 0.89]`` ..."""
    shown = []
    for key, value in values.items():
        if key.rsplit("/", 1)[-1] in ("accuracy", "auroc", "dice", "map"):
            low, high = values.get(f"{key}_ci_low"), values.get(f"{key}_ci_high")
            shown.append(f"{key}={value:.4f}" + (f" [{low:.4f}, {high:.4f}]" if low is not None else ""))
    return ", ".join(shown) or "no headline metric"


def cmd_report(args: argparse.Namespace, params: Params) -> None:
    from ace_lora.report import collect_metrics, headline_table, write_figures, write_plot_data, write_report

    methods, datasets = list(params.methods), list(params.evaluate.datasets)
    paths = stage_paths(params)
    frame = collect_metrics(Path(params.paths.results) / "metrics" / "evaluate", methods, datasets)
    log.info(
        "read %d metrics of %d methods x %d data sets (params: %s; %s)",
        len(frame),
        len(methods),
        len(datasets),
        ", ".join(methods),
        ", ".join(datasets),
    )
    training = {
        m: json.loads(stage_paths(params, m)["train_metrics"].read_text())
        for m in methods
        if stage_paths(params, m)["train_metrics"].is_file()
    }
    summary = write_report(frame, methods, paths["report_md"], paths["report_csv"], paths["summary"], training)
    for key, value in summary.items():
        log.info("  %-28s %7.2f %%", key, value)
    evaluate_dirs = {(m, d): stage_paths(params, m, d)["evaluate"] for m in methods for d in datasets}
    n_plots = write_plot_data(evaluate_dirs, paths["plots"])
    train_logs = {m: (stage_paths(params, m)["train_log"], stage_paths(params, m)["train_val_log"]) for m in methods}
    counts = write_figures(headline_table(frame, methods), methods, evaluate_dirs, train_logs, paths["report_dir"])
    log.info(
        "wrote %s, %s and %s (%d summary values); %d DVC plot files under %s; figures under %s: %s",
        paths["report_md"],
        paths["report_csv"],
        paths["summary"],
        len(summary),
        n_plots,
        paths["plots"],
        paths["report_dir"],
        ", ".join(f"{n} {k}" for k, n in counts.items()),
    )
    print(paths["report_md"].read_text())


def cmd_describe_model(args: argparse.Namespace, params: Params | None) -> None:
    from ace_lora.models import describe_model

    print(describe_model(args.preset))


def cmd_import_checkpoint(args: argparse.Namespace, params: Params | None) -> None:
    from ace_lora.models import import_official_checkpoint

    out = import_official_checkpoint(Path(args.checkpoint), Path(args.out), preset=args.preset)
    print(f"imported {args.checkpoint} -> {out}")


def cmd_schema(args: argparse.Namespace, params: Params | None) -> None:
    text = json.dumps(schema(), indent=2) + "\n"
    if args.markdown:
        sys.stdout.write(parameter_table() + "\n")
    elif args.check:
        current = Path(args.check).read_text() if Path(args.check).is_file() else ""
        if current != text:
            raise ParamsError(f"{args.check} is out of date: run `python -m ace_lora schema --write {args.check}`")
    elif args.write:
        atomic_write_text(args.write, text)
    else:
        sys.stdout.write(text)


# ---------------------------------------------------------------------------------------------- parsing


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ace-lora")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _methods_help(params_path: str | None) -> str:
    """The methods defined in the parameters file, for --help (listed when the file loads)."""
    names = []
    if params_path is not None:
        try:
            names = list(load_params(params_path).methods)
        except (ParamsError, OSError):
            pass
    where = f"methods of {params_path or 'the parameters file'}"
    return f"{where}: {', '.join(names)}" if names else where


def build_parser(params_path: str | None = None) -> argparse.ArgumentParser:
    """The CLI; ``params_path``: list that file's methods in the help texts."""
    epilog = f"Data sets: {', '.join(DATASETS)}. {_methods_help(params_path).capitalize()}."
    parser = argparse.ArgumentParser(prog="python -m ace_lora", description=__doc__.splitlines()[0], epilog=epilog)
    parser.add_argument("--version", action="version", version=f"ace-lora {_version()}")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    dataset_help = f"data set: {', '.join(DATASETS)}"
    method_help = _methods_help(params_path)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="stage")

    def add(name: str, func, help: str, needs_params: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func, needs_params=needs_params)
        return p

    add("fetch", cmd_fetch, "Fetch (demo: generate) one raw data set, or verify it in place.").add_argument(
        "dataset", choices=DATASETS, metavar="dataset", help=dataset_help
    )
    add("prepare", cmd_prepare, "Prepare one data set: manifest, image cache, masks, boxes.").add_argument(
        "dataset", choices=DATASETS, metavar="dataset", help=dataset_help
    )
    add("prompts", cmd_prompts, "Write the zero-shot prompts file.")
    p = add("train", cmd_train, "Train (or export, for train: false) one method's adapter.")
    p.add_argument("method", help=method_help)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an unfinished run with identical settings, data and code (its fingerprint), or "
        "reuse a finished one; anything else trains from scratch and says why",
    )
    p = add("evaluate", cmd_evaluate, "Evaluate one method on every benchmark of one data set.")
    p.add_argument("method", help=method_help)
    p.add_argument("dataset", choices=DATASETS, metavar="dataset", help=dataset_help)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when present")
    add("report", cmd_report, "Build results/benchmarks.md and .csv from the metrics files.")
    p = add("describe-model", cmd_describe_model, "Print the trainable-parameter breakdown of a preset.", False)
    p.add_argument("--preset", default="biomedclip", choices=("tiny", "biomedclip"))
    p = add(
        "import-checkpoint",
        cmd_import_checkpoint,
        "Convert the official ACE_LoRA.pt into an adapter folder of this project.",
        False,
    )
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="biomedclip", choices=("tiny", "biomedclip"))
    p = add("schema", cmd_schema, "Print (or --write/--check) the params.yaml JSON schema.", False)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH")
    group.add_argument("--check", metavar="PATH")
    group.add_argument("--markdown", action="store_true", help="print the parameter table (README)")
    return parser


#: Errors that mean bad input, missing data, invalid parameters or a diverging run: one line, exit 2. pandas'
#: ParserError, EmptyDataError and MergeError are ValueErrors; gzip.BadGzipFile is an OSError.
USER_ERRORS = (
    ParamsError,
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    ArithmeticError,
    EOFError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    subprocess.CalledProcessError,
)


def describe_error(err: BaseException) -> str:
    """One line naming the problem and, for the classes without their own remedy, what to do."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f"{err.filename}: " if err.filename else ""
        message = f"{where}no space left on device; free disk space (or point paths.* elsewhere) and rerun"
    elif isinstance(err, (EOFError, zipfile.BadZipFile, pickle.UnpicklingError)):
        message = (
            f"truncated or corrupt file ({type(err).__name__}: {message or 'unexpected end of data'}); "
            f"delete or re-fetch the file named above and rerun"
        )
    elif isinstance(err, subprocess.CalledProcessError):
        message = f"training processes failed with exit code {err.returncode}; their log lines above name the cause"
    return re.sub(r"\s*\n\s*", " ", message).strip() or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--params", default="params.yaml")
    wants_help = any(a in ("-h", "--help") for a in argv)
    args = build_parser(pre.parse_known_args(argv)[0].params if wants_help else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params(args.params) if args.needs_params else None
        args.func(args, params)
    except USER_ERRORS as err:  # one line naming the problem (--debug: the traceback)
        if args.debug:
            raise
        print(f"error ({args.stage}): {describe_error(err)}", file=sys.stderr)
        return 2
    return 0
