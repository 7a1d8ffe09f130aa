"""The report: tables, summary metrics, plot data and figures, from the metrics files of the methods x data sets
in params alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ace_lora.plots import (
    save_detection_overlay,
    save_segmentation_overlay,
    write_plot_csvs,
)
from ace_lora.report import (
    collect_metrics,
    headline_table,
    macro_roc,
    summary_metrics,
    write_figures,
    write_plot_data,
    write_report,
)

METHODS = ["lora_only", "ace_lora", "base"]  # params order, deliberately not alphabetical


def _write(metrics_dir: Path, method: str, dataset: str, metrics: dict) -> None:
    path = metrics_dir / method / f"{dataset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics))


def _chexpert(acc: float) -> dict:
    return {
        "zeroshot/chexpert5x200/accuracy": acc,
        "zeroshot/chexpert5x200/accuracy_ci_low": acc - 0.03,
        "zeroshot/chexpert5x200/accuracy_ci_high": acc + 0.03,
        "zeroshot/chexpert5x200/f1": 0.5,
        "zeroshot/chexpert5x200/n_images": 1000,
        "not a key": 3,
    }


def _siim(dice: float) -> dict:
    return {
        "zeroshot/siim/auroc": 0.8,
        "grounding/siim_seg/dice": dice,
        "grounding/siim_seg/dice_ci_low": dice - 0.05,
        "grounding/siim_seg/dice_ci_high": dice + 0.05,
        "grounding/siim_seg/threshold": 0.6,
        "dataeff_10pct/siim_seg/dice": dice + 0.1,
        "dataeff_1pct/siim_seg/dice": dice + 0.01,
    }


@pytest.fixture
def metrics_dir(tmp_path):
    root = tmp_path / "metrics" / "evaluate"
    for k, method in enumerate(METHODS):
        _write(root, method, "chexpert", _chexpert(0.4 + 0.1 * k))
        _write(root, method, "siim", _siim(0.2 + 0.1 * k))
    _write(root, "removed_method", "chexpert", _chexpert(0.99))  # left over from an earlier params.yaml
    _write(root, "ace_lora", "mhist", {"zeroshot/mhist/accuracy": 0.99})  # a data set no longer evaluated
    return root


def test_collect_metrics_reads_exactly_params(metrics_dir):
    df = collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"])
    assert list(df.columns) == ["method", "benchmark", "protocol", "metric", "value", "ci_low", "ci_high"]
    assert set(df.method) == set(METHODS) and "mhist" not in set(df.benchmark)
    row = df[(df.method == "ace_lora") & (df.metric == "accuracy")].iloc[0]
    assert (row.benchmark, row.protocol, row.value) == ("chexpert5x200", "zeroshot", 0.5)
    assert (row.ci_low, row.ci_high) == pytest.approx((0.47, 0.53))
    seg = df[(df.benchmark == "siim_seg") & (df.method == "base")]
    assert set(seg.protocol) == {"grounding", "dataeff_10pct", "dataeff_1pct"}
    assert np.isnan(seg[seg.protocol == "dataeff_1pct"].iloc[0].ci_low)
    with pytest.raises(FileNotFoundError, match=r"removed_method.*siim.*evaluate stage"):
        collect_metrics(metrics_dir, ["removed_method"], ["siim"])


def test_removed_method_leaves_the_report(metrics_dir, tmp_path):
    """Issue 10 item 7: the tables and the summary follow params, whatever else lies on disk."""
    out = tmp_path / "out"
    for methods in (METHODS + ["removed_method"], METHODS):
        datasets = ["chexpert"] if "removed_method" in methods else ["chexpert", "siim"]
        summary = write_report(
            collect_metrics(metrics_dir, methods, datasets), methods, out / "b.md", out / "b.csv", out / "summary.json"
        )
    text = (out / "b.md").read_text()
    assert "removed_method" not in text and "99.00" not in text
    assert not any(k.startswith("removed_method/") for k in json.loads((out / "summary.json").read_text()))
    assert set(pd.read_csv(out / "b.csv").method) == set(METHODS)
    assert summary == json.loads((out / "summary.json").read_text())


def test_tables_split_in_params_order_with_paper_once(metrics_dir, tmp_path):
    df = collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"])
    write_report(df, METHODS, tmp_path / "b.md", tmp_path / "b.csv")
    text = (tmp_path / "b.md").read_text()
    sections = text.split("\n## ")
    titles = [s.splitlines()[0] for s in sections[1:]]
    assert titles == ["Classification (zero-shot)", "siim_seg: segmentation, Dice", "rsna_det: detection, mAP"]
    classification, seg = sections[1], sections[2]
    rows = [line.split(" | ")[0].strip("| ") for line in classification.splitlines() if line.startswith("| ")][1:]
    assert rows == METHODS + ["paper (reported, zero-shot)"]
    assert "| ace_lora | 50.00 [47.0, 53.0] |" in classification
    header = next(line for line in seg.splitlines() if line.startswith("| method"))
    assert header == "| method | zero-shot grounding | data-efficient 1 % | data-efficient 10 % |"
    assert "| base | 40.00 [35.0, 45.0] | 41.00 | 50.00 |" in seg
    for value in ("49.80", "87.19", "57.27", "84.03", "90.39", "46.34", "21.29"):
        assert text.count(value) == 1, value  # the paper's value once per benchmark
    assert "Paper: 46.34 (protocol not stated" in seg
    assert "No results" in sections[3]  # rsna_det: no data set evaluated


def test_csv_is_all_percent(metrics_dir, tmp_path):
    write_report(
        collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"]), METHODS, tmp_path / "b.md", tmp_path / "b.csv"
    )
    table = pd.read_csv(tmp_path / "b.csv")
    assert list(table.columns) == [
        "method",
        "benchmark",
        "protocol",
        "metric",
        "value_pct",
        "ci_low_pct",
        "ci_high_pct",
        "paper_pct",
        "paper_protocol",
    ]
    assert set(table.metric) == {"accuracy", "auroc", "dice"}  # headline metrics only
    chex = table[table.benchmark == "chexpert5x200"]
    assert chex.value_pct.tolist() == pytest.approx([40.0, 50.0, 60.0])  # rows in params order
    assert chex.paper_pct.iloc[0] == 49.8
    values = table[["value_pct", "ci_low_pct", "ci_high_pct"]].to_numpy(float)
    assert (values[~np.isnan(values)] > 1).all()  # no fractions left
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_summary_keys_are_short_and_one_per_benchmark(metrics_dir):
    df = collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"])
    training = {
        "base": {"trained": False, "steps": 0},
        "ace_lora": {"trained": True, "val_metric": "zeroshot/nih14/auroc", "val_best": 0.61234},
    }
    summary = summary_metrics(headline_table(df, METHODS), METHODS, training)
    assert list(summary) == [f"{m}/{b}" for m in METHODS for b in ("chexpert_acc", "siim_auc", "siim_seg_dice")] + [
        "ace_lora/val_nih14_auc"
    ]
    assert summary["ace_lora/chexpert_acc"] == 50.0 and summary["ace_lora/val_nih14_auc"] == 61.23
    assert summary["base/siim_seg_dice"] == 40.0  # zero-shot grounding, not a data-efficient head
    assert max(map(len, summary)) <= 28


def test_write_report_without_results(tmp_path):
    summary = write_report(
        collect_metrics(tmp_path, [], []), [], tmp_path / "b.md", tmp_path / "b.csv", tmp_path / "s.json"
    )
    assert "| paper (reported, zero-shot) |" in (tmp_path / "b.md").read_text() and summary == {}


def test_macro_roc():
    one = pd.DataFrame({"class": ["a"] * 3, "fpr": [0, 0.5, 1], "tpr": [0, 1, 1]})
    assert macro_roc(one).values.tolist() == [[0, 0], [0.5, 1], [1, 1]]
    two = pd.concat([one, one.assign(**{"class": "b", "tpr": [0, 0, 1]})])
    curve = macro_roc(two, points=3)
    assert curve.values.tolist() == [[0, 0], [0.5, 0.5], [1, 1]]


def _evaluation(folder: Path, k: int) -> None:
    folder.mkdir(parents=True)
    roc = pd.DataFrame(
        {
            "class": ["x"] * 3 + ["y"] * 3,
            "fpr": [0, 0.2, 1] * 2,
            "tpr": [0, 0.7 + 0.1 * k, 1] * 2,
            "threshold": [1, 0.5, 0] * 2,
        }
    )
    confusion = pd.DataFrame({"actual": ["x", "x", "y", "y"], "predicted": ["x", "y", "x", "y"], "count": [3, 1, 2, 4]})
    write_plot_csvs({"roc": roc, "confusion": confusion}, folder, prefix="chexpert5x200_")
    image = np.random.default_rng(k).random((32, 32))
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    for protocol in ("grounding", "dataeff_1pct", "dataeff_10pct"):
        for i in range(3):
            save_segmentation_overlay(image, image, mask, mask, folder / f"{protocol}_siim_seg_{i:03d}.png", "x")


def test_plot_data_and_figures(metrics_dir, tmp_path):
    dirs = {}
    for k, method in enumerate(METHODS):
        dirs[(method, "chexpert")] = tmp_path / "evaluate" / method / "chexpert"
        _evaluation(dirs[(method, "chexpert")], k)
    plots = tmp_path / "plots"
    (plots / "roc" / "removed_method").mkdir(parents=True)  # stale: the folder is rewritten whole
    assert write_plot_data(dirs, plots) == 2 * len(METHODS)
    assert sorted(p.name for p in (plots / "roc").iterdir()) == sorted(METHODS)
    roc = pd.read_csv(plots / "roc" / "ace_lora" / "chexpert5x200.csv")
    assert list(roc.columns) == ["fpr", "tpr"] and roc.tpr.is_monotonic_increasing
    confusion = pd.read_csv(plots / "confusion" / "base" / "chexpert5x200.csv")
    assert len(confusion) == 10 and (confusion.actual == confusion.predicted).sum() == 7  # one row per image

    logs = {}
    for k, method in enumerate(METHODS):
        step, val = tmp_path / "train" / f"{method}.csv", tmp_path / "train" / f"{method}_val.csv"
        step.parent.mkdir(exist_ok=True)
        step.write_text("step,epoch,loss\n" + ("" if method == "base" else "10,1,3.0\n20,1,2.5\n"))
        val.write_text("step,epoch,val_metric\n0,0,0.5\n" + ("" if method == "base" else f"20,1,0.{6 + k}\n"))
        logs[method] = (step, val)
    table = headline_table(collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"]), METHODS)
    counts = write_figures(table, METHODS, dirs, logs, tmp_path / "report")
    report = tmp_path / "report"
    assert counts == {"charts": 3, "confusion": 1, "overlays": 2 * len(METHODS), "roc": 1, "tables": 1, "training": 1}
    assert sorted(p.name for p in (report / "charts").iterdir()) == ["chexpert5x200.png", "siim.png", "siim_seg.png"]
    overlays = sorted(p.name for p in (report / "overlays").iterdir())
    assert "siim_seg_grounding_ace_lora_000.png" in overlays and not any("dataeff_1pct" in n for n in overlays)
    for png in report.rglob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG", png
    page = (report / "tables" / "benchmarks.html").read_text()
    assert page.count("<table>") == 3 and "<td>50.00 [47.0, 53.0]</td>" in page


def test_overlays_have_colour_bar_legend_and_short_title(tmp_path):
    from ace_lora.plots import (
        HEATMAP_CMAP,
        draw_detection_overlay,
        draw_segmentation_overlay,
    )

    image = np.random.rand(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    figures = [
        draw_segmentation_overlay(image, image, mask, mask, title="siim_seg test #0"),
        draw_detection_overlay(image, image, [[1, 1, 10, 10]], np.zeros((0, 4)), title="rsna_det test #0"),
    ]
    for fig in figures:
        main, bar = fig.axes  # the image and its colour bar
        assert "similarity" in bar.get_ylabel()
        assert main.images[1].get_cmap().name == HEATMAP_CMAP != "jet"
        assert [t.get_text() for t in main.get_legend().get_texts()][1].startswith("ground")
        assert main.get_title().endswith("test #0")
    seg = save_segmentation_overlay(image, image, mask, mask, tmp_path / "seg.png", title="x")
    det = save_detection_overlay(image, image, [[1, 1, 10, 10]], np.zeros((0, 4)), tmp_path / "det.png")
    for path in (seg, det):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_dvc_plots_and_metrics_render(metrics_dir, tmp_path):
    """The plots and metrics dvc.yaml declares render with `dvc plots show` / `dvc metrics show` on report output;
    `dvc plots diff HEAD` compares git-tracked plot files."""
    import shutil
    import subprocess
    import sys

    import yaml

    from ace_lora.plots import write_offline_plots_template

    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(root / name, project / name)
    (project / ".dvc").mkdir()
    shutil.copy(root / ".dvc/config", project / ".dvc/config")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["methods"] = {m: {} for m in METHODS}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    results = project / "results"
    dirs = {}
    for k, method in enumerate(METHODS):
        dirs[(method, "chexpert")] = tmp_path / "evaluate" / method / "chexpert"
        _evaluation(dirs[(method, "chexpert")], k)
        (results / "plots" / "train").mkdir(parents=True, exist_ok=True)
        (results / "plots" / "train" / f"{method}.csv").write_text("step,epoch,loss\n10,1,3.0\n20,1,2.5\n")
        (results / "plots" / "train" / f"{method}_val.csv").write_text("step,epoch,val_metric\n0,0,0.5\n20,1,0.6\n")
    write_plot_data(dirs, results / "plots")
    table = headline_table(collect_metrics(metrics_dir, METHODS, ["chexpert", "siim"]), METHODS)
    (results / "metrics").mkdir()
    (results / "metrics" / "summary.json").write_text(json.dumps(summary_metrics(table, METHODS)))

    def run(*cmd):
        proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    tracked = run("git", "ls-files")
    assert "results/plots/roc/ace_lora/chexpert5x200.csv" in tracked and "results/metrics/summary.json" in tracked
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")

    shown = json.loads(run(sys.executable, "-m", "dvc", "plots", "show", "--json"))
    ids = set(shown["data"]) if "data" in shown else set(shown)
    for method in METHODS:
        for expected in (
            f"results/plots/roc/{method}/chexpert5x200.csv",
            f"results/plots/confusion/{method}/chexpert5x200.csv",
            f"results/plots/train/{method}.csv",
            f"results/plots/train/{method}_val.csv",
        ):
            assert any(expected in i for i in ids), (expected, sorted(ids))
    metrics = json.loads(run(sys.executable, "-m", "dvc", "metrics", "show", "--json"))
    keys = {k for rev in metrics.values() for f in rev.get("data", {}).values() for k in f.get("data", {})}
    assert "ace_lora/chexpert_acc" in keys and not any(k.startswith("zeroshot/") for k in keys), keys

    template = write_offline_plots_template(tmp_path / "offline.html")
    run(sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template), "-o", "dvc_plots")
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page and page.count("<script>") >= 3
    (results / "plots" / "roc" / "base" / "chexpert5x200.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    diff = json.loads(run(sys.executable, "-m", "dvc", "plots", "diff", "HEAD", "--json"))
    assert "HEAD" in json.dumps(diff) and "workspace" in json.dumps(diff)
