"""benchmarks/demo_spread.py on a tiny setting: 2 seeds, 2 methods, 1 epoch on a few pairs, one evaluation set."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "demo_spread.py"


@pytest.fixture(scope="module")
def spread():
    spec = importlib.util.spec_from_file_location("demo_spread", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_spread"] = module
    spec.loader.exec_module(module)
    return module


def test_summarize_mean_sd_min_max(spread):
    row = {"method": "m", "benchmark": "mhist", "protocol": "zeroshot", "metric": "accuracy"}
    stats = spread.summarize(
        {
            1: pd.DataFrame([{**row, "value": 50.0}]),
            2: pd.DataFrame([{**row, "value": 60.0}]),
            3: pd.DataFrame([{**row, "value": 70.0}]),
        }
    )
    assert stats.iloc[0][["n", "mean", "sd", "min", "max"]].tolist() == [3, 60.0, 10.0, 50.0, 70.0]
    assert "| m | mhist | zeroshot | accuracy | 3 | 60.0 ± 10.0 | 50.0–70.0 |" in spread.to_markdown(stats, [1, 2, 3])


def test_two_seeds_on_a_tiny_demo(spread, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    params = {
        "paths": {
            "raw": str(tmp_path / "raw"),
            "processed": str(tmp_path / "processed"),
            "results": str(tmp_path / "unused"),
        },
        "data": {"demo": {"n_train": 32, "n_per_class": 4}},
        "model": {"preset": "tiny", "lora": {"alpha": 8.0}},
        "methods": {
            "base": {"train": False, "lora": {"enabled": False}, "hgnn": {"towers": "none"}},
            "lora_only": {"hgnn": {"towers": "none"}},
            "unused": {},
        },
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "validate_every": 1, "log_every": 1},
        "evaluate": {"datasets": ["mhist"], "bootstrap": 0, "batch_size": 32},
    }
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    try:
        assert (
            spread.main(
                [
                    "--params",
                    str(tmp_path / "params.yaml"),
                    "--seeds",
                    "2",
                    "--methods",
                    "base,lora_only",
                    "--out",
                    str(tmp_path / "spread"),
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(before)
    stats = pd.read_csv(tmp_path / "spread" / "spread.csv")
    assert sorted(stats["method"].unique()) == ["base", "lora_only"]
    assert set(stats["benchmark"]) == {"mhist"} and (stats["n"] == 2).all()
    base = stats[stats["method"] == "base"].iloc[0]
    assert base["sd"] == 0 and base["min"] == base["max"]  # the untrained model does not depend on the seed
    seeds = [
        json.loads((tmp_path / "spread" / f"seed{k}" / "metrics" / "train" / "lora_only.json").read_text())
        for k in (1, 2)
    ]
    assert seeds[0]["run"] != seeds[1]["run"]  # train.seed is part of the run identity
    assert "mean ± sd" in (tmp_path / "spread" / "spread.md").read_text()
