"""Results report: the metrics files of the methods x data sets in params -> tables, a summary, plot data, figures.

Metric keys are ``{protocol}/{benchmark}/{metric}`` (``zeroshot/chexpert5x200/accuracy``); a confidence interval
travels as ``{metric}_ci_low`` / ``{metric}_ci_high`` beside it. The report shows one headline metric per benchmark
(:data:`HEADLINE_METRICS`), in percent, as ``value [low, high]``, and the paper's reported value once per benchmark.

Outputs (paths from ``ace_lora.cli.stage_paths``):

* ``benchmarks.md``: a classification table (zero-shot) and one table per grounding benchmark (segmentation,
  detection: a column per protocol), methods in ``params.methods`` order;
* ``benchmarks.csv``: the same headline rows in long format, every number in percent (``*_pct`` columns);
* ``metrics/summary.json``: one headline value per method and benchmark, keys ``<method>/<benchmark>_<metric>``
  (percent), and each trained method's best validation score: the one file ``dvc metrics show`` / ``dvc exp show``
  display;
* ``plots/roc/<method>/<benchmark>.csv`` and ``plots/confusion/<method>/<benchmark>.csv``: DVC plot data;
* ``report/``: the results page's figures and the HTML tables (``snakemake --report``).
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ace_lora.io import atomic_dir, atomic_write_json, atomic_write_text
from ace_lora.registry import BENCHMARKS

__all__ = [
    "HEADLINE_METRICS",
    "PAPER_RESULTS",
    "PROTOCOLS",
    "collect_metrics",
    "headline_table",
    "summary_metrics",
    "write_figures",
    "write_plot_data",
    "write_report",
]

COLUMNS = ["method", "benchmark", "protocol", "metric", "value", "ci_low", "ci_high"]

#: Benchmark -> the metric shown in the tables and the summary (in this order).
HEADLINE_METRICS = {
    "chexpert5x200": "accuracy",
    "rsna": "auroc",
    "siim": "auroc",
    "mhist": "accuracy",
    "lc25000_lung": "accuracy",
    "lc25000_colon": "accuracy",
    "nih14": "auroc",
    "siim_seg": "dice",
    "rsna_det": "map",
}

#: Short benchmark names of the summary keys.
SHORT_NAMES = {"chexpert5x200": "chexpert", "lc25000_lung": "lung", "lc25000_colon": "colon"}

#: Values reported by the ACE-LoRA paper (percent) and the protocol each was measured with.
PAPER_RESULTS = {
    "chexpert5x200": (49.8, "zero-shot"),
    "rsna": (87.19, "zero-shot"),
    "mhist": (57.27, "zero-shot"),
    "lc25000_lung": (84.03, "zero-shot"),
    "lc25000_colon": (90.39, "zero-shot"),
    "siim_seg": (46.34, "protocol not stated (MGCA data-efficient splits, or zero-shot grounding)"),
    "rsna_det": (21.29, "protocol not stated (MGCA data-efficient splits, or zero-shot grounding)"),
}

PROTOCOLS = {
    "zeroshot": "the image embedding against the class prompts' text embeddings, no training on the benchmark",
    "grounding": "patch-prompt similarity maps, no training on the benchmark; threshold chosen on the validation split",
    "dataeff": "frozen image encoder + trained dense head on a fraction of the training labels",
}

METRIC_LABELS = {
    "accuracy": "ACC",
    "auroc": "AUC",
    "dice": "Dice",
    "map": "mAP",
    "f1": "F1",
    "balanced_accuracy": "BACC",
}
_SUMMARY_SUFFIX = {"accuracy": "acc", "auroc": "auc", "dice": "dice", "map": "map"}


# ------------------------------------------------------------------------------------------- collecting


def collect_metrics(metrics_dir: str | Path, methods: Sequence[str], datasets: Sequence[str]) -> pd.DataFrame:
    """The metrics files ``metrics_dir/<method>/<dataset>.json`` of exactly ``methods`` x ``datasets``, long format.

    Files of other methods or data sets (left over from an earlier configuration) are not read. Columns: method,
    benchmark, protocol, metric, value, ci_low, ci_high (NaN without an interval); a data set file may hold
    several benchmarks (``siim`` and ``siim_seg``). Keys of another shape are ignored. A missing file is an error.
    """
    rows: dict[tuple, dict] = {}
    for method in methods:
        for dataset in datasets:
            path = Path(metrics_dir) / method / f"{dataset}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: no metrics for method {method!r} on {dataset!r}; run the "
                    f"evaluate stage first (snakemake, or dvc repro)"
                )
            try:
                values = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err}); rerun `evaluate {method} {dataset}`") from err
            if not isinstance(values, dict):
                raise ValueError(f"{path}: expected a mapping of metric keys to numbers")
            for key, value in values.items():
                parts = key.split("/")
                if len(parts) != 3 or not all(parts) or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                protocol, benchmark, metric = parts
                bound = None
                for suffix in ("_ci_low", "_ci_high"):
                    if metric.endswith(suffix):
                        metric, bound = metric[: -len(suffix)], suffix[1:]
                row = rows.setdefault(
                    (method, benchmark, protocol, metric),
                    {
                        "method": method,
                        "benchmark": benchmark,
                        "protocol": protocol,
                        "metric": metric,
                        "value": np.nan,
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                    },
                )
                row[bound or "value"] = float(value)
    return pd.DataFrame(list(rows.values()), columns=COLUMNS)


# -------------------------------------------------------------------------------------------- the tables


def _benchmark_rank(name: str) -> tuple[int, str]:
    order = list(HEADLINE_METRICS)
    return (order.index(name) if name in order else len(order), name)


#: Segmentation and detection benchmarks (from the registry), one table each, in table order.
_GROUNDING_TASKS = {
    b.name: b.task
    for b in sorted(BENCHMARKS.values(), key=lambda b: _benchmark_rank(b.name))
    if b.task in ("segmentation", "detection")
}


def _protocol_rank(protocol: str) -> tuple[int, float, str]:
    """zeroshot, grounding, then dataeff_<pct>pct by fraction, then anything else."""
    order = ["zeroshot", "grounding", "dataeff"]
    base, _, rest = protocol.partition("_")
    pct = (
        float(rest[:-3]) if base == "dataeff" and rest.endswith("pct") and rest[:-3].replace(".", "").isdigit() else 0.0
    )
    return (order.index(base) if base in order else len(order), pct, protocol)


def _protocol_label(protocol: str) -> str:
    base, _, rest = protocol.partition("_")
    if base == "dataeff" and rest.endswith("pct"):
        return f"data-efficient {rest[:-3]} %"
    return {"zeroshot": "zero-shot", "grounding": "zero-shot grounding"}.get(protocol, protocol)


def _protocol_note(protocol: str) -> str:
    base, _, rest = protocol.partition("_")
    if base == "dataeff" and rest.endswith("pct"):
        return (
            f"frozen image encoder + linear patch head trained on {rest[:-3]} % of the train split's labels, "
            "threshold chosen on the validation split"
        )
    return PROTOCOLS.get(protocol, PROTOCOLS.get(base, protocol))


def headline_table(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Headline rows (one metric per benchmark and protocol) in percent, rows in ``methods`` order.

    Columns: method, benchmark, protocol, metric, value_pct, ci_low_pct, ci_high_pct, paper_pct, paper_protocol
    (the paper's value of the benchmark, repeated on its rows so the CSV stands alone).
    """
    keep = df[np.array([HEADLINE_METRICS.get(b) == m for b, m in zip(df["benchmark"], df["metric"])], bool)].copy()
    keep = keep[keep["method"].isin(methods)]
    for column in ("value", "ci_low", "ci_high"):
        keep[f"{column}_pct"] = 100 * keep.pop(column)
    keep["paper_pct"] = [PAPER_RESULTS.get(b, (np.nan, ""))[0] for b in keep["benchmark"]]
    keep["paper_protocol"] = [PAPER_RESULTS.get(b, (np.nan, ""))[1] for b in keep["benchmark"]]
    order = {m: i for i, m in enumerate(methods)}
    keys = [
        (_benchmark_rank(b), _protocol_rank(p), order[m])
        for b, p, m in zip(keep["benchmark"], keep["protocol"], keep["method"])
    ]
    keep = keep.iloc[sorted(range(len(keep)), key=keys.__getitem__)] if len(keep) else keep
    return keep.reset_index(drop=True)


def _cell(row: pd.Series | None) -> str:
    if row is None or np.isnan(row["value_pct"]):
        return "—"
    text = f"{row['value_pct']:.2f}"
    if not (np.isnan(row["ci_low_pct"]) or np.isnan(row["ci_high_pct"])):
        text += f" [{row['ci_low_pct']:.1f}, {row['ci_high_pct']:.1f}]"
    return text


def _tables(table: pd.DataFrame, methods: Sequence[str]) -> list[dict]:
    """The report's tables as data: title, header, rows (lists of cells) and notes; shared by Markdown and HTML."""
    lookup = {(r.method, r.benchmark, r.protocol): r for _, r in table.iterrows()}
    classification = sorted(
        {b for b, p in zip(table["benchmark"], table["protocol"]) if p == "zeroshot"}
        | {b for b in PAPER_RESULTS if b not in _GROUNDING_TASKS},
        key=_benchmark_rank,
    )
    tables = [
        {
            "title": "Classification (zero-shot)",
            "header": ["method"]
            + [f"{b} {METRIC_LABELS[HEADLINE_METRICS.get(b, 'accuracy')]}" for b in classification],
            "rows": [[m] + [_cell(lookup.get((m, b, "zeroshot"))) for b in classification] for m in methods]
            + [
                ["paper (reported, zero-shot)"]
                + [f"{PAPER_RESULTS[b][0]:.2f}" if b in PAPER_RESULTS else "—" for b in classification]
            ],
            "notes": [],
        }
    ]
    for bench, task in _GROUNDING_TASKS.items():
        protocols = sorted({p for b, p in zip(table["benchmark"], table["protocol"]) if b == bench}, key=_protocol_rank)
        paper, paper_protocol = PAPER_RESULTS.get(bench, (None, ""))
        tables.append(
            {
                "title": f"{bench}: {task}, {METRIC_LABELS[HEADLINE_METRICS[bench]]}",
                "header": ["method"] + [_protocol_label(p) for p in protocols],
                "rows": [[m] + [_cell(lookup.get((m, bench, p))) for p in protocols] for m in methods],
                "notes": [f"Paper: {paper:.2f} ({paper_protocol})." if paper is not None else "Paper: not reported."]
                + ([] if protocols else ["No results: the data set is not in `evaluate.datasets`."]),
            }
        )
    return tables


def _protocol_notes(table: pd.DataFrame) -> list[str]:
    return [
        f"- {_protocol_label(p)} (`{p}`): {_protocol_note(p)}"
        for p in sorted(set(table["protocol"]) | {"zeroshot"}, key=_protocol_rank)
    ]


def _markdown(table: pd.DataFrame, methods: Sequence[str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Values in percent; brackets: 95 % bootstrap confidence interval over test images.",
        "Rows follow `methods` in params.yaml.",
    ]
    for t in _tables(table, methods):
        lines += ["", f"## {t['title']}", "", "| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        lines += ["| " + " | ".join(row) + " |" for row in t["rows"]]
        lines += ([""] + t["notes"]) if t["notes"] else []
    lines += ["", "Protocols:"] + _protocol_notes(table)
    return "\n".join(lines) + "\n"


_HTML_STYLE = """body{font-family:sans-serif;margin:1em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right;font-size:13px}th{background:#eee}
td:first-child,th:first-child{text-align:left}tr.paper td{font-style:italic;background:#f7f7f7}
p.note{font-size:12px;color:#555}"""


def _html(table: pd.DataFrame, methods: Sequence[str]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>ACE-LoRA benchmarks</title>',
        f"<style>{_HTML_STYLE}</style></head><body>",
        "<h1>Benchmarks</h1>",
        '<p class="note">Values in percent; brackets: 95 % bootstrap confidence interval over test images. '
        "Rows follow <code>methods</code> in params.yaml.</p>",
    ]
    for t in _tables(table, methods):
        parts += [
            f"<h2>{esc(t['title'])}</h2>",
            "<table>",
            "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in t["header"]) + "</tr>",
        ]
        for row in t["rows"]:
            cls = ' class="paper"' if row[0].startswith("paper") else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
        parts += [f'<p class="note">{esc(n)}</p>' for n in t["notes"]]
    parts += ["<h2>Protocols</h2>", "<ul>"]
    parts += [f"<li>{esc(n[2:].replace('`', ''))}</li>" for n in _protocol_notes(table)]
    parts += ["</ul>", "</body></html>"]
    return "\n".join(parts) + "\n"


def summary_metrics(
    table: pd.DataFrame, methods: Sequence[str], training: Mapping[str, dict] | None = None
) -> dict[str, float]:
    """One headline value (percent, 2 decimals) per method and benchmark: ``<method>/<benchmark>_<metric>``.

    Classification benchmarks report their zero-shot value; segmentation and detection their zero-shot
    grounding value (or, without it, the first protocol in :func:`_protocol_rank` order). ``benchmarks.csv`` holds
    every protocol. ``training`` (method -> its training metrics file) adds the best validation score of model
    selection as ``<method>/val_<benchmark>_<metric>`` for trained methods.
    """
    out: dict[str, float] = {}
    order = {m: i for i, m in enumerate(methods)}
    keys = [
        (order[m], _benchmark_rank(b), _protocol_rank(p))
        for m, b, p in zip(table["method"], table["benchmark"], table["protocol"])
    ]
    rows = table.iloc[sorted(range(len(table)), key=keys.__getitem__)] if len(table) else table
    for _, row in rows.drop_duplicates(["method", "benchmark"]).iterrows():
        if not np.isnan(row["value_pct"]):
            bench = SHORT_NAMES.get(row["benchmark"], row["benchmark"])
            out[f"{row['method']}/{bench}_{_SUMMARY_SUFFIX.get(row['metric'], row['metric'])}"] = round(
                float(row["value_pct"]), 2
            )
    for method, values in (training or {}).items():
        parts = str(values.get("val_metric", "")).split("/")
        if values.get("trained") and len(parts) == 3 and isinstance(values.get("val_best"), (int, float)):
            bench, metric = SHORT_NAMES.get(parts[1], parts[1]), _SUMMARY_SUFFIX.get(parts[2], parts[2])
            out[f"{method}/val_{bench}_{metric}"] = round(100 * float(values["val_best"]), 2)
    return out


def write_report(
    df: pd.DataFrame,
    methods: Sequence[str],
    md_path: str | Path,
    csv_path: str | Path,
    summary_path: str | Path | None = None,
    training: Mapping[str, dict] | None = None,
) -> dict[str, float]:
    """Write the tables (``md_path``), the headline rows as CSV (``csv_path``) and the summary metrics
    (:func:`summary_metrics`, with ``training``).

    ``df`` is :func:`collect_metrics`'s output; every file is written atomically. Returns the summary.
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"write_report: metrics table lacks column(s) {missing}")
    table = headline_table(df, methods)
    atomic_write_text(md_path, _markdown(table, methods))
    atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.4f"))
    summary = summary_metrics(table, methods, training)
    if summary_path is not None:
        atomic_write_json(summary_path, summary)
    return summary


# ------------------------------------------------------------------------------------- plot data, figures


def macro_roc(roc: pd.DataFrame, points: int = 101) -> pd.DataFrame:
    """One ROC curve from per-class curves (columns class, fpr, tpr): the classes' TPR averaged on a common FPR
    grid (macro average); a single class is returned as is."""
    classes = list(dict.fromkeys(roc["class"]))
    if len(classes) == 1:
        return roc[["fpr", "tpr"]].reset_index(drop=True)
    grid = np.linspace(0.0, 1.0, points)
    tpr = np.mean(
        [
            np.interp(grid, g["fpr"].to_numpy(float), g["tpr"].to_numpy(float))
            for _, g in roc.groupby("class", sort=False)
        ],
        axis=0,
    )
    return pd.DataFrame({"fpr": grid, "tpr": tpr})


def _artifacts(evaluate_dirs: Mapping[tuple[str, str], Path], kind: str) -> dict[str, dict[str, pd.DataFrame]]:
    """benchmark -> method -> the ``<benchmark>_<kind>.csv`` table of each evaluation folder."""
    found: dict[str, dict[str, pd.DataFrame]] = {}
    for (method, _), folder in evaluate_dirs.items():
        for path in sorted(Path(folder).glob(f"*_{kind}.csv")):
            found.setdefault(path.name[: -len(f"_{kind}.csv")], {})[method] = pd.read_csv(path)
    return dict(sorted(found.items(), key=lambda kv: _benchmark_rank(kv[0])))


def write_plot_data(evaluate_dirs: Mapping[tuple[str, str], Path], plots_dir: str | Path) -> int:
    """DVC plot data: ``roc/<method>/<benchmark>.csv`` (fpr, tpr; macro average over classes) and
    ``confusion/<method>/<benchmark>.csv`` (one row per test image: actual, predicted) under ``plots_dir``.

    ``evaluate_dirs`` maps (method, dataset) to its evaluation folder. The two folders are rewritten whole, so
    methods no longer in params leave them. Returns the number of files written.
    """
    written = 0
    for kind in ("roc", "confusion"):
        with atomic_dir(Path(plots_dir) / kind) as out:
            for bench, frames in _artifacts(evaluate_dirs, kind).items():
                for method, frame in frames.items():
                    if kind == "roc":
                        frame = macro_roc(frame)
                    else:
                        frame = frame.loc[frame.index.repeat(frame["count"]), ["actual", "predicted"]]
                    (out / method).mkdir(exist_ok=True)
                    frame.to_csv(out / method / f"{bench}.csv", index=False, float_format="%.6g")
                    written += 1
    return written


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else pd.DataFrame()


def write_figures(
    table: pd.DataFrame,
    methods: Sequence[str],
    evaluate_dirs: Mapping[tuple[str, str], Path],
    train_logs: Mapping[str, tuple[Path, Path]],
    out_dir: str | Path,
    overlays_per_benchmark: int = 1,
) -> dict[str, int]:
    """The results page's files under ``out_dir`` (rewritten whole): ``tables/benchmarks.html`` (the tables of
    ``benchmarks.md``; ``table`` is :func:`headline_table`'s output),
    ``charts/<benchmark>.png`` (every method with its 95 % interval and the paper's value),
    ``roc/<benchmark>.png``, ``confusion/<benchmark>.png``, ``training/curves.png`` and
    ``overlays/<benchmark>_<protocol>_<method>_<i>.png`` (copied from the evaluation folders: the first
    ``overlays_per_benchmark`` test images of each method, for zero-shot grounding and the data-efficient head with
    the most labels). Returns the number of files per folder.
    """
    from ace_lora import plots

    with atomic_dir(out_dir) as out:
        for sub in ("tables", "charts", "roc", "confusion", "training", "overlays"):
            (out / sub).mkdir()
        (out / "tables" / "benchmarks.html").write_text(_html(table, methods))
        for bench in sorted(set(table["benchmark"]), key=_benchmark_rank):
            rows = table[table["benchmark"] == bench].rename(columns=lambda c: c.removesuffix("_pct"))
            rows = rows.assign(protocol=rows["protocol"].map(_protocol_label))
            paper, _ = PAPER_RESULTS.get(bench, (None, ""))
            label = METRIC_LABELS.get(HEADLINE_METRICS[bench], HEADLINE_METRICS[bench])
            plots.save_benchmark_chart(
                rows,
                list(methods),
                out / "charts" / f"{bench}.png",
                title=f"{bench} ({label}, 95 % CI)",
                ylabel=f"{label} (%)",
                paper=paper,
                paper_label="paper",
            )
        for bench, frames in _artifacts(evaluate_dirs, "roc").items():
            plots.save_roc_chart(frames, out / "roc" / f"{bench}.png", title=f"{bench}: ROC, one-vs-rest per class")
        for bench, frames in _artifacts(evaluate_dirs, "confusion").items():
            plots.save_confusion_chart(
                frames, out / "confusion" / f"{bench}.png", title=f"{bench}: confusion matrix (test images)"
            )
        steps = {m: _read_csv(p) for m, (p, _) in train_logs.items()}
        vals = {m: _read_csv(v) for m, (_, v) in train_logs.items()}
        if any(len(f) for f in [*steps.values(), *vals.values()]):
            plots.save_training_curves(
                steps, vals, out / "training" / "curves.png", val_label="validation zero-shot score"
            )
        dataeff = sorted({p for p in table["protocol"] if p.startswith("dataeff")}, key=_protocol_rank)
        overlay_protocols = {"grounding", *dataeff[-1:]}
        for (method, _), folder in evaluate_dirs.items():
            for png in sorted(Path(folder).glob("*.png")):
                stem, _, index = png.stem.rpartition("_")  # <protocol>_<benchmark>_<i>
                bench = next((b for b in _GROUNDING_TASKS if stem.endswith(f"_{b}")), None)
                protocol = stem[: -len(bench) - 1] if bench else ""
                if bench and protocol in overlay_protocols and index.isdigit() and int(index) < overlays_per_benchmark:
                    shutil.copyfile(png, out / "overlays" / f"{bench}_{protocol}_{method}_{index}.png")
        counts = {sub.name: len(list(sub.iterdir())) for sub in sorted(out.iterdir())}
    return counts
