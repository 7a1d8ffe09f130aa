"""The results table is built from the metrics files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ace_lora.eval.report import (
    collect_metrics, save_detection_overlay, save_segmentation_overlay, write_plot_csvs, write_report,
)


def _write(results: Path, method: str, dataset: str, metrics: dict) -> None:
    path = results / "evaluate" / method / dataset / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


@pytest.fixture
def results(tmp_path):
    _write(tmp_path, "ace_lora", "chexpert", {
        "zeroshot/chexpert5x200/accuracy": 0.5123, "zeroshot/chexpert5x200/accuracy_ci_low": 0.48,
        "zeroshot/chexpert5x200/accuracy_ci_high": 0.54, "zeroshot/chexpert5x200/f1": 0.5,
        "zeroshot/chexpert5x200/n_images": 1000})
    _write(tmp_path, "ace_lora", "siim", {
        "zeroshot/siim/auroc": 0.8, "grounding/siim_seg/dice": 0.3, "grounding/siim_seg/dice_ci_low": 0.25,
        "grounding/siim_seg/dice_ci_high": 0.35, "grounding/siim_seg/threshold": 0.6})
    _write(tmp_path, "biomedclip", "chexpert", {"zeroshot/chexpert5x200/accuracy": 0.4, "not a key": 3})
    (tmp_path / "evaluate" / "stray.json").write_text("{}")
    return tmp_path


def test_collect_metrics_long_format(results):
    df = collect_metrics(results)
    assert list(df.columns) == ["method", "benchmark", "protocol", "metric", "value", "ci_low", "ci_high"]
    row = df[(df.method == "ace_lora") & (df.metric == "accuracy")].iloc[0]
    assert (row.benchmark, row.protocol, row.value, row.ci_low, row.ci_high) == (
        "chexpert5x200", "zeroshot", 0.5123, 0.48, 0.54)
    seg = df[df.benchmark == "siim_seg"]
    assert set(seg.metric) == {"dice", "threshold"} and set(seg.protocol) == {"grounding"}
    assert np.isnan(df[(df.method == "biomedclip")].iloc[0].ci_low)
    assert len(df) == 7  # "not a key" is ignored
    assert collect_metrics(results / "nothing").empty


def test_collect_metrics_dvc_layout(tmp_path):
    """results/metrics/evaluate/<method>/<dataset>.json, given the results root or that folder."""
    folder = tmp_path / "metrics" / "evaluate" / "lora_only"
    folder.mkdir(parents=True)
    (folder / "mhist.json").write_text(json.dumps({"zeroshot/mhist/accuracy": 0.6,
                                                   "zeroshot/mhist/accuracy_ci_low": 0.55,
                                                   "zeroshot/mhist/accuracy_ci_high": 0.65}))
    for where in (tmp_path, tmp_path / "metrics" / "evaluate"):
        df = collect_metrics(where)
        assert df[["method", "benchmark", "metric", "value", "ci_low"]].values.tolist() == [
            ["lora_only", "mhist", "accuracy", 0.6, 0.55]]


def test_write_report_table(results, tmp_path):
    md, csv = write_report(collect_metrics(results), tmp_path / "out" / "benchmarks.md",
                           tmp_path / "out" / "benchmarks.csv")
    text = md.read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert "chexpert5x200 ACC (zeroshot)" in header and "siim_seg Dice (grounding)" in header
    assert header.index("chexpert5x200") < header.index("siim_seg")
    ace = next(line for line in lines if line.startswith("| ace_lora"))
    assert "51.23 [48.00, 54.00]" in ace and "30.00 [25.00, 35.00]" in ace and "80.00" in ace
    base = next(line for line in lines if line.startswith("| biomedclip"))
    assert "40.00 |" in base and "—" in base
    paper = next(line for line in lines if line.startswith("| paper"))
    for value in ("49.80", "87.19", "46.34", "21.29", "57.27", "84.03", "90.39"):
        assert value in paper
    assert "`grounding`" in text and "`zeroshot`" in text
    table = pd.read_csv(csv)
    assert set(table.metric) == {"accuracy", "auroc", "dice"}  # headline metrics only
    assert table.loc[table.benchmark == "chexpert5x200", "paper"].iloc[0] == 49.8
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_write_report_without_results(tmp_path):
    md, _ = write_report(collect_metrics(tmp_path), tmp_path / "b.md", tmp_path / "b.csv")
    assert "| paper (reported) |" in md.read_text()


def test_plot_files(tmp_path):
    paths = write_plot_csvs({"roc": pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]})}, tmp_path, prefix="rsna_")
    assert paths == [tmp_path / "rsna_roc.csv"] and pd.read_csv(paths[0]).shape == (2, 2)
    image = np.random.rand(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    seg = save_segmentation_overlay(image, image, mask, mask, tmp_path / "seg.png", title="x")
    det = save_detection_overlay(image, image, [[1, 1, 10, 10]], np.zeros((0, 4)), tmp_path / "det.png")
    for path in (seg, det):
        assert path.read_bytes()[:4] == b"\x89PNG"
