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
    out = _script("bench_model").main(["--preset", "tiny", "--batch-sizes", "4", "--steps", "1", "--warmup", "0",
                                       "--image-batch", "4", "--device", "cpu", "--precision", precision,
                                       "--text-nodes", "content", "--fill", "0.5", "--json", str(tmp_path / "b.json")])
    kinds = {r["kind"]: r for r in out["runs"]}
    assert set(kinds) == {"train_step", "image_embedding"} and (tmp_path / "b.json").is_file()
    assert kinds["train_step"]["precision"] == precision and math.isfinite(kinds["train_step"]["loss"])
    assert kinds["train_step"]["samples_per_s"] > 0 and kinds["image_embedding"]["images_per_s"] > 0


def test_bench_train_tiny(tmp_path):
    assert _script("bench_train").main(["--preset", "tiny", "--batch", "4", "--steps", "1", "--device", "cpu",
                                        "--precision", "bf16", "--out", str(tmp_path / "t.json")]) == 0
    (result,) = json.loads((tmp_path / "t.json").read_text())["results"]
    assert result["precision"] == "bf16" and result["pairs_per_s"] > 0 and result["peak_gflops"] == 700.0


def test_bench_eval_tiny():
    out = _script("bench_eval").main(["--preset", "tiny", "--images", "6", "--batch-size", "3", "--repeats", "1",
                                      "--bootstrap", "10", "--precision", "bf16"])
    assert out["precision"] == "bf16" and out["batched_images_per_s"] > 0 and out["evaluate_benchmark_s"] > 0
