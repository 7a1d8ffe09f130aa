"""Figures: grounding overlays (the evaluate stage) and the results page's charts (the report stage).

Every function draws one PNG with matplotlib's Agg backend (no display needed) and writes it atomically. The evaluate
stage draws the overlays evaluation returns (:func:`save_overlays`) and writes its tables (:func:`write_plot_csvs`);
the report stage draws the rest from evaluation's and training's CSV files, so changing a chart never reruns an
evaluation. Colours: one per method, fixed by the method's position in ``params.methods``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ace_lora.io import atomic_write, atomic_write_text

__all__ = [
    "draw_detection_overlay",
    "draw_segmentation_overlay",
    "save_benchmark_chart",
    "save_confusion_chart",
    "save_detection_overlay",
    "save_overlays",
    "save_roc_chart",
    "save_segmentation_overlay",
    "save_training_curves",
    "write_offline_plots_template",
    "write_plot_csvs",
]

#: Colour map of the similarity heatmap under the overlays (perceptually uniform, unlike jet).
HEATMAP_CMAP = "inferno"
PRED_COLOUR, GT_COLOUR, PAPER_COLOUR = "cyan", "lime", "black"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list:
    cmap = _pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def write_plot_csvs(artifacts: Mapping[str, pd.DataFrame], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write each artifact table (ROC points, confusion counts, predictions) as ``<prefix><name>.csv``; atomic."""
    return [
        atomic_write_text(Path(out_dir) / f"{prefix}{name}.csv", frame.to_csv(index=False))
        for name, frame in artifacts.items()
    ]


# ------------------------------------------------------------------------------------------- overlays


def _overlay_axes(image: np.ndarray, heatmap: np.ndarray, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(image, cmap="gray")
    shown = ax.imshow(heatmap, cmap=HEATMAP_CMAP, alpha=0.45, vmin=0.0, vmax=1.0)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("patch-prompt similarity (sigmoid)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig, ax


def _legend(ax, kinds: Iterable[tuple[str, str]]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colour, linewidth=1.5, label=label) for label, colour in kinds]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7, frameon=False)


def draw_segmentation_overlay(
    image: np.ndarray, heatmap: np.ndarray, pred_mask: np.ndarray, gt_mask: np.ndarray, title: str = ""
):
    """Figure: grey image, similarity heatmap in [0, 1] with its colour bar, predicted mask contour (cyan) and
    ground truth contour (green), with a legend."""
    fig, ax = _overlay_axes(image, heatmap, title)
    for mask, colour in ((pred_mask, PRED_COLOUR), (gt_mask, GT_COLOUR)):
        if np.asarray(mask).any():
            ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour, linewidths=1.2)
    _legend(ax, [("predicted mask", PRED_COLOUR), ("ground truth", GT_COLOUR)])
    return fig


def draw_detection_overlay(
    image: np.ndarray, heatmap: np.ndarray, pred_boxes: Iterable, gt_boxes: Iterable, title: str = ""
):
    """Figure: grey image, similarity heatmap with its colour bar, predicted boxes (cyan) and ground-truth boxes
    (green), with a legend; boxes are x1, y1, x2, y2 in image pixels."""
    from matplotlib import patches

    fig, ax = _overlay_axes(image, heatmap, title)
    for boxes, colour in ((pred_boxes, PRED_COLOUR), (gt_boxes, GT_COLOUR)):
        for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4):
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.2))
    _legend(ax, [("predicted box", PRED_COLOUR), ("ground-truth box", GT_COLOUR)])
    return fig


def save_segmentation_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    path: str | Path,
    title: str = "",
) -> Path:
    """PNG of :func:`draw_segmentation_overlay`."""
    return _save(draw_segmentation_overlay(image, heatmap, pred_mask, gt_mask, title), path)


def save_detection_overlay(
    image: np.ndarray, heatmap: np.ndarray, pred_boxes: Iterable, gt_boxes: Iterable, path: str | Path, title: str = ""
) -> Path:
    """PNG of :func:`draw_detection_overlay`."""
    return _save(draw_detection_overlay(image, heatmap, pred_boxes, gt_boxes, title), path)


def save_overlays(overlays: Iterable, out_dir: str | Path) -> list[Path]:
    """PNG of every overlay record (``ace_lora.eval.common.Overlay``: ``kind``, ``filename``, ``title``, ``image``,
    ``heatmap``, ``prediction``, ``truth``) as ``out_dir/<filename>``, in order."""
    save = {"segmentation": save_segmentation_overlay, "detection": save_detection_overlay}
    return [
        save[o.kind](o.image, o.heatmap, o.prediction, o.truth, Path(out_dir) / o.filename, title=o.title)
        for o in overlays
    ]


# ------------------------------------------------------------------------------------ results charts


def save_benchmark_chart(
    rows: pd.DataFrame,
    methods: list[str],
    path: str | Path,
    title: str,
    ylabel: str,
    paper: float | None = None,
    paper_label: str = "paper",
) -> Path:
    """One benchmark: a bar per method and protocol with its 95 % interval, and the paper's value as a dashed line.

    ``rows``: columns method, protocol, value, ci_low, ci_high (percent; NaN interval = no error bar). Methods are
    drawn in ``methods`` order; several protocols (zero-shot grounding, data-efficient fractions) form groups.
    """
    plt = _pyplot()
    protocols = list(dict.fromkeys(rows["protocol"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(protocols) * max(len(methods), 1) * 0.5 + 2), 3.2))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(protocols))
    for k, (method, colour) in enumerate(zip(methods, _colours(len(methods)))):
        sub = rows[rows["method"] == method].set_index("protocol").reindex(protocols)
        values = sub["value"].to_numpy(float)
        err = np.vstack([values - sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float) - values])
        ax.bar(
            x + (k - (len(methods) - 1) / 2) * width,
            values,
            width,
            color=colour,
            label=method,
            yerr=np.nan_to_num(err),
            capsize=3,
            error_kw={"linewidth": 1},
        )
    if paper is not None and not np.isnan(paper):
        ax.axhline(paper, color=PAPER_COLOUR, linestyle="--", linewidth=1, label=f"{paper_label} ({paper:g})")
    ax.set_xticks(x, protocols, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def save_roc_chart(curves: Mapping[str, pd.DataFrame], path: str | Path, title: str) -> Path:
    """ROC curves of every method (one panel per class; columns class, fpr, tpr) with the chance diagonal."""
    plt = _pyplot()
    classes = list(dict.fromkeys(c for frame in curves.values() for c in frame["class"].astype(str)))
    cols = min(len(classes), 5) or 1
    rows = int(np.ceil(len(classes) / cols)) or 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols + 1.2, 2.4 * rows + 0.4), squeeze=False, sharex=True, sharey=True
    )
    colours = _colours(len(curves))
    for ax, name in zip(axes.flat, classes):
        for (method, frame), colour in zip(curves.items(), colours):
            part = frame[frame["class"].astype(str) == name]
            ax.plot(part["fpr"], part["tpr"], color=colour, linewidth=1.2, label=method)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(name, fontsize=8)
    for ax in axes.flat[len(classes) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("false positive rate", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("true positive rate", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_confusion_chart(confusions: Mapping[str, pd.DataFrame], path: str | Path, title: str) -> Path:
    """Confusion matrices (rows: actual, columns: predicted, cells: image counts), one panel per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(confusions), figsize=(3.2 * len(confusions) + 0.5, 3.4), squeeze=False)
    for ax, (method, frame) in zip(axes[0], confusions.items()):
        classes = list(dict.fromkeys(frame["actual"].astype(str)))
        counts = (
            frame.pivot_table(index="actual", columns="predicted", values="count", aggfunc="sum")
            .reindex(index=classes, columns=classes)
            .fillna(0)
            .to_numpy(int)
        )
        ax.imshow(counts, cmap="Blues")
        for (i, j), n in np.ndenumerate(counts):
            ax.text(
                j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > counts.max() / 2 else "black"
            )
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_title(method, fontsize=9)
    axes[0, 0].set_ylabel("actual", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def save_training_curves(
    steps: Mapping[str, pd.DataFrame],
    validations: Mapping[str, pd.DataFrame],
    path: str | Path,
    val_label: str = "validation metric",
) -> Path:
    """Training loss (columns step, loss) and validation score (columns step, val_metric) of every method, each on
    one shared axis; methods without training (no rows) are left out of the loss panel."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), sharex=True)
    methods = list(dict.fromkeys([*steps, *validations]))
    for method, colour in zip(methods, _colours(len(methods))):
        frame = steps.get(method)
        if frame is not None and len(frame):
            left.plot(frame["step"], frame["loss"], color=colour, linewidth=1.2, label=method)
        frame = validations.get(method)
        if frame is not None and len(frame):
            right.plot(
                frame["step"],
                100 * frame["val_metric"],
                color=colour,
                marker="o",
                markersize=3,
                linewidth=1.2,
                label=method,
            )
    left.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    right.set(title="validation", xlabel="optimizer step", ylabel=f"{val_label} (%)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------- DVC plots offline

_OFFLINE_PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>DVC plots</title>
{scripts}
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def write_offline_plots_template(path: str | Path) -> Path:
    """An HTML template for ``dvc plots show --html-template PATH`` that inlines vega, vega-lite and vega-embed,
    so the plots render without network (DVC's default page loads them from a CDN).

    The scripts come from the copies the installed Snakemake ships for its own reports (``snakemake.assets``).
    """
    from snakemake.assets import Assets

    scripts = "\n".join(
        f"<script>{Assets.get_content(f'{name}/{name}.js')}</script>" for name in ("vega", "vega-lite", "vega-embed")
    )
    return atomic_write_text(Path(path), _OFFLINE_PAGE.format(scripts=scripts))
