"""Helpers shared by the training tests (single process, distributed, GPU): a tiny prepared data set, the
parameters of a real tiny-model run, and the training log reader."""

from __future__ import annotations

import csv
from pathlib import Path

from ace_lora.config import Params, build


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def prepare_tiny_data(base: Path, n_train: int = 32, n_per_class: int = 8) -> Path:
    """Synthetic MIMIC pairs + NIH validation images, prepared as the pipeline does, and the demo tokenizer."""
    from ace_lora.config import DataConfig, DemoConfig
    from ace_lora.data import prepare_dataset
    from ace_lora.demo import write_fixture
    from ace_lora.models.tokenizer import write_tokenizer

    demo = DemoConfig(n_train=n_train, n_per_class=n_per_class)
    for name in ("mimic", "nih14"):
        write_fixture(name, base / "raw" / name, demo)
        prepare_dataset(name, base / "raw", base / "processed" / name, DataConfig(demo=demo), workers=1)
    write_tokenizer(base / "tokenizer")
    return base


def real_params(base: Path, lora: dict | None = None, methods: dict | None = None, **train) -> Params:
    cfg = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 3e-3,
        "warmup_epochs": 0.5,
        "validation": "nih14",
        "log_every": 1,
        "checkpoint_every": 2,
        "seed": 1,
    }
    cfg.update(train)
    return build(
        Params,
        {
            "paths": {"raw": str(base / "raw"), "processed": str(base / "processed"), "results": str(base / "results")},
            "model": {
                "preset": "tiny",
                "tokenizer": str(base / "tokenizer"),
                "lora": {"alpha": 8.0, "dropout": 0.1, **(lora or {})},
            },
            "evaluate": {"batch_size": 32},
            "methods": methods or {"ace": {}},
            "train": cfg,
        },
    )
