"""Results report: collect every evaluation metrics file, write ``benchmarks.md`` / ``benchmarks.csv`` and plot files.

Metric keys are ``{protocol}/{benchmark}/{metric}`` (``zeroshot/chexpert5x200/accuracy``); a confidence interval
travels as ``{metric}_ci_low`` / ``{metric}_ci_high`` beside it. The table shows one headline metric per benchmark
and protocol, in percent, as ``value [low, high]``, with the paper's reported value in its own row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ace_lora.io import atomic_write, atomic_write_text

__all__ = ["HEADLINE_METRICS", "PAPER_RESULTS", "PROTOCOLS", "collect_metrics", "headline_table", "write_report",
           "write_plot_csvs", "save_segmentation_overlay", "save_detection_overlay"]

COLUMNS = ["method", "benchmark", "protocol", "metric", "value", "ci_low", "ci_high"]

#: Benchmark -> the metric shown in the table (in this order).
HEADLINE_METRICS = {
    "chexpert5x200": "accuracy", "rsna": "auroc", "siim": "auroc", "mhist": "accuracy",
    "lc25000_lung": "accuracy", "lc25000_colon": "accuracy", "siim_seg": "dice", "rsna_det": "map",
    "nih14": "auroc",
}

#: Values reported by the ACE-LoRA paper (percent) and the protocol each was measured with.
PAPER_RESULTS = {
    "chexpert5x200": (49.8, "zero-shot"), "rsna": (87.19, "zero-shot"), "mhist": (57.27, "zero-shot"),
    "lc25000_lung": (84.03, "zero-shot"), "lc25000_colon": (90.39, "zero-shot"),
    "siim_seg": (46.34, "not stated (MGCA data-efficient splits, or zero-shot grounding)"),
    "rsna_det": (21.29, "not stated (MGCA data-efficient splits, or zero-shot grounding)"),
}

PROTOCOLS = {
    "zeroshot": "zero-shot classification with class prompts",
    "grounding": "zero-shot grounding: patch-prompt similarity maps, threshold chosen on the validation split",
    "dataeff": "data-efficient: frozen image encoder + trained dense head on a fraction of the training labels",
}

_METRIC_LABELS = {"accuracy": "ACC", "auroc": "AUC", "dice": "Dice", "map": "mAP", "f1": "F1",
                  "balanced_accuracy": "BACC"}


# ------------------------------------------------------------------------------------------- collecting


def _split_key(key: str) -> tuple[str, str, str] | None:
    parts = key.split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None


def _metrics_files(results_dir: Path) -> list[tuple[str, Path]]:
    """(method, path) of every evaluation metrics file under ``results_dir`` (see :func:`collect_metrics`)."""
    found: dict[Path, str] = {}
    for path in results_dir.glob("evaluate/*/*/metrics.json"):
        found[path.resolve()] = path.parent.parent.name
    metrics_dir = results_dir / "metrics" / "evaluate"
    base = metrics_dir if metrics_dir.is_dir() else results_dir
    if base == metrics_dir or not found:
        for path in base.glob("*/*.json"):
            found.setdefault(path.resolve(), path.parent.name)
    return sorted(((method, path) for path, method in found.items()), key=lambda item: (item[0], str(item[1])))


def collect_metrics(results_dir: str | Path) -> pd.DataFrame:
    """Every evaluation metrics file in long format.

    ``results_dir`` is the results root, holding ``metrics/evaluate/<method>/<dataset>.json`` (the DVC metrics
    layout) and/or ``evaluate/<method>/<dataset>/metrics.json``; or the ``metrics/evaluate`` folder itself.
    Columns: method, benchmark, protocol, metric, value, ci_low, ci_high (NaN without an interval). The method is
    the folder name; protocol, benchmark and metric come from the ``{protocol}/{benchmark}/{metric}`` keys, so a
    data set file may hold several benchmarks (``siim`` and ``siim_seg``). Keys of another shape are ignored.
    """
    rows: dict[tuple, dict] = {}
    for method, path in _metrics_files(Path(results_dir)):
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of metric keys to numbers")
        for key, value in values.items():
            parts = _split_key(key)
            if parts is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            protocol, benchmark, metric = parts
            bound = None
            for suffix in ("_ci_low", "_ci_high"):
                if metric.endswith(suffix):
                    metric, bound = metric[: -len(suffix)], suffix[1:]
            row = rows.setdefault((method, benchmark, protocol, metric),
                                  {"method": method, "benchmark": benchmark, "protocol": protocol,
                                   "metric": metric, "value": np.nan, "ci_low": np.nan, "ci_high": np.nan})
            row[bound or "value"] = float(value)
    return pd.DataFrame(list(rows.values()), columns=COLUMNS)


# -------------------------------------------------------------------------------------------- the table


def _benchmark_rank(name: str) -> tuple[int, str]:
    order = list(HEADLINE_METRICS)
    return (order.index(name) if name in order else len(order), name)


def _protocol_rank(protocol: str) -> tuple[int, float, str]:
    """zeroshot, grounding, then dataeff_<pct>pct by fraction, then anything else."""
    order = ["zeroshot", "grounding", "dataeff"]
    base, _, rest = protocol.partition("_")
    pct = float(rest[:-3]) if base == "dataeff" and rest.endswith("pct") and rest[:-3].replace(".", "").isdigit() \
        else 0.0
    return (order.index(base) if base in order else len(order), pct, protocol)


def _format(value: float, low: float, high: float) -> str:
    if value is None or np.isnan(value):
        return "—"
    text = f"{100 * value:.2f}"
    if not (np.isnan(low) or np.isnan(high)):
        text += f" [{100 * low:.2f}, {100 * high:.2f}]"
    return text


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Headline rows only (one metric per benchmark), with the paper's value (percent) in column ``paper``."""
    keep = df[df.apply(lambda r: HEADLINE_METRICS.get(r["benchmark"]) == r["metric"], axis=1)] if len(df) else df
    keep = keep.copy()
    keep["paper"] = [PAPER_RESULTS.get(b, (np.nan, ""))[0] for b in keep["benchmark"]]
    keep["paper_protocol"] = [PAPER_RESULTS.get(b, (np.nan, ""))[1] for b in keep["benchmark"]]
    ranks = keep["benchmark"].map(_benchmark_rank) if len(keep) else keep["benchmark"]
    prot = keep["protocol"].map(_protocol_rank) if len(keep) else keep["protocol"]
    return keep.assign(_rank=ranks, _prot=prot).sort_values(["_rank", "_prot", "method"]).drop(
        columns=["_rank", "_prot"]).reset_index(drop=True)


def _protocol_note(protocol: str) -> str:
    base, _, rest = protocol.partition("_")
    if base == "dataeff" and rest.endswith("pct"):
        return (f"data-efficient: frozen image encoder + linear patch head trained on {rest[:-3]} % of the train "
                "split's labels, threshold chosen on the validation split")
    return PROTOCOLS.get(protocol, PROTOCOLS.get(base, protocol))


def _markdown(table: pd.DataFrame) -> str:
    columns = sorted({(b, p, m) for b, p, m in zip(table["benchmark"], table["protocol"], table["metric"])},
                     key=lambda c: (_benchmark_rank(c[0]), _protocol_rank(c[1])))
    # benchmarks with a paper value but no result yet still get a column, so the paper row is complete
    for bench in PAPER_RESULTS:
        if not any(c[0] == bench for c in columns):
            columns.append((bench, "—", HEADLINE_METRICS[bench]))
    columns.sort(key=lambda c: (_benchmark_rank(c[0]), _protocol_rank(c[1])))
    header = [f"{b} {_METRIC_LABELS.get(m, m)} ({p})" for b, p, m in columns]
    lines = ["| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(columns)]
    for method in sorted(set(table["method"])):
        cells = []
        for bench, protocol, metric in columns:
            hit = table[(table["method"] == method) & (table["benchmark"] == bench) & (table["protocol"] == protocol)]
            cells.append(_format(*hit.iloc[0][["value", "ci_low", "ci_high"]]) if len(hit) else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    paper = [f"{PAPER_RESULTS[b][0]:.2f}" if b in PAPER_RESULTS else "—" for b, _, _ in columns]
    lines.append("| paper (reported) | " + " | ".join(paper) + " |")
    notes = ["", "Values in percent; brackets: 95 % bootstrap confidence interval over test images.", "",
             "Protocols:"]
    for protocol in sorted({c[1] for c in columns if c[1] != "—"}, key=_protocol_rank):
        notes.append(f"- `{protocol}`: {_protocol_note(protocol)}")
    notes.append("- paper row: " + "; ".join(f"{b}: {v[1]}" for b, v in PAPER_RESULTS.items()))
    return "\n".join(["# Benchmarks", ""] + lines + notes) + "\n"


def write_report(df: pd.DataFrame, md_path: str | Path, csv_path: str | Path) -> tuple[Path, Path]:
    """Write the methods x benchmarks table (``md_path``) and its headline rows as CSV (``csv_path``).

    ``df`` is :func:`collect_metrics`'s output. Both files are written atomically (temporary file + rename).
    The CSV holds one row per method, benchmark and protocol (headline metric, fractions in [0, 1]) plus the
    paper's value in percent (``paper``) and its protocol (``paper_protocol``).
    """
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"write_report: metrics table lacks column(s) {missing}")
    table = headline_table(df)
    atomic_write_text(md_path, _markdown(table))
    atomic_write_text(csv_path, table.to_csv(index=False))
    return Path(md_path), Path(csv_path)


# ---------------------------------------------------------------------------------------------- plots


def write_plot_csvs(artifacts: dict[str, pd.DataFrame], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write each artifact table (ROC points, confusion counts, predictions) as ``<prefix><name>.csv``
    for ``dvc plots``; atomic writes."""
    out_dir = Path(out_dir)
    paths = []
    for name, frame in artifacts.items():
        paths.append(atomic_write_text(out_dir / f"{prefix}{name}.csv", frame.to_csv(index=False)))
    return paths


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _figure(image: np.ndarray, heatmap: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(image, cmap="gray")
    ax.imshow(heatmap, cmap="jet", alpha=0.35)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return fig, ax


def save_segmentation_overlay(image: np.ndarray, heatmap: np.ndarray, pred_mask: np.ndarray,
                              gt_mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """PNG: image, similarity heatmap, predicted mask contour (white) and ground truth contour (green)."""
    fig, ax = _figure(image, heatmap, title)
    for mask, colour in ((pred_mask, "white"), (gt_mask, "lime")):
        if np.asarray(mask).any():
            ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour, linewidths=1)
    return _save_figure(fig, Path(path))


def save_detection_overlay(image: np.ndarray, heatmap: np.ndarray, pred_boxes: Iterable, gt_boxes: Iterable,
                           path: str | Path, title: str = "") -> Path:
    """PNG: image, similarity heatmap, predicted boxes (white) and ground-truth boxes (green); boxes x1,y1,x2,y2."""
    import matplotlib.patches as patches

    fig, ax = _figure(image, heatmap, title)
    for boxes, colour in ((pred_boxes, "white"), (gt_boxes, "lime")):
        for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4):
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1))
    return _save_figure(fig, Path(path))
