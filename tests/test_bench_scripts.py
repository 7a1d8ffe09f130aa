"""The benchmark scripts run (tiny preset, one step) and report well-formed figures: they cannot silently rot."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_model_tiny(precision, tmp_path):
    out = _script("bench_model").main(
        [
            "--preset",
            "tiny",
            "--batch-sizes",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--image-batch",
            "4",
            "--device",
            "cpu",
            "--precision",
            precision,
            "--text-nodes",
            "content",
            "--fill",
            "0.5",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    kinds = {r["kind"]: r for r in out["runs"]}
    assert set(kinds) == {"train_step", "image_embedding"} and (tmp_path / "b.json").is_file()
    assert kinds["train_step"]["precision"] == precision and math.isfinite(kinds["train_step"]["loss"])
    assert kinds["train_step"]["samples_per_s"] > 0 and kinds["image_embedding"]["images_per_s"] > 0


def test_bench_train_tiny(tmp_path):
    assert (
        _script("bench_train").main(
            [
                "--preset",
                "tiny",
                "--batch",
                "4",
                "--steps",
                "1",
                "--device",
                "cpu",
                "--precision",
                "bf16",
                "--out",
                str(tmp_path / "t.json"),
            ]
        )
        == 0
    )
    (result,) = json.loads((tmp_path / "t.json").read_text())["results"]
    assert result["precision"] == "bf16" and result["pairs_per_s"] > 0 and result["peak_gflops"] == 700.0


def test_bench_eval_tiny():
    out = _script("bench_eval").main(
        [
            "--preset",
            "tiny",
            "--images",
            "6",
            "--batch-size",
            "3",
            "--repeats",
            "1",
            "--bootstrap",
            "10",
            "--precision",
            "bf16",
        ]
    )
    assert out["precision"] == "bf16" and out["batched_images_per_s"] > 0 and out["evaluate_benchmark_s"] > 0


def test_device_check_dry_run(tmp_path):
    """The GPU check script runs end to end on the CPU (tiny preset) and leaves its figures in $OUT."""
    import os
    import subprocess

    root = BENCHMARKS.parent
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "DEVICE_CHECK_DRY_RUN": "1",
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
    }
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "device_check.sh")], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    log = (tmp_path / "device_check.log").read_text()
    assert "needs CUDA" in log and "pairs/s" in log and "done in" in log
    (train,) = json.loads((tmp_path / "bench_train_bf16.json").read_text())["results"]
    assert train["precision"] == "bf16" and train["pairs_per_s"] > 0
    assert json.loads((tmp_path / "bench_eval_bf16.json").read_text())["batched_images_per_s"] > 0
    assert {r["kind"] for r in json.loads((tmp_path / "bench_model_bf16.json").read_text())["runs"]} == {
        "train_step",
        "image_embedding",
    }


def test_bench_prepare_tiny(tmp_path):
    out = _script("bench_prepare").main(
        [
            "--images",
            "2",
            "--jpeg",
            "320",
            "260",
            "--dicom",
            "96",
            "--size",
            "32",
            "--workers",
            "1",
            "--json",
            str(tmp_path / "p.json"),
        ]
    )
    assert set(out["serial_s_per_image"]) == {"jpeg", "jpeg_draft", "dicom"}
    assert all(s > 0 for s in out["serial_s_per_image"].values())
    assert out["parallel_jpeg_draft"][1]["images_per_s"] > 0 and out["projected_mimic_hours"] > 0
    assert json.loads((tmp_path / "p.json").read_text())["mimic_images"] == 377_110


def test_bench_loader_tiny(tmp_path):
    out = _script("bench_loader").main(
        [
            "--preset",
            "tiny",
            "--images",
            "8",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--repeats",
            "1",
            "--json",
            str(tmp_path / "l.json"),
        ]
    )
    assert out["runs"][0]["images_per_s"] > 0 and out["image_size"] == 64
    assert json.loads((tmp_path / "l.json").read_text())["runs"]["0"]["images_per_s_per_core"] > 0
