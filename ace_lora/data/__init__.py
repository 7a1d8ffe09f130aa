"""Data sets: fetch (raw layouts), prepare (one processed format), benchmarks and torch Datasets.

``fetch_dataset`` lives in :mod:`ace_lora.data.fetch` and is imported on first use.
"""

from __future__ import annotations

from ace_lora.data.prepare import prepare_dataset
from ace_lora.data.readers import BadInputError
from ace_lora.registry import CHEXPERT_5X200_CLASSES, CHEXPERT_FINDINGS, DATASET_NAMES, NIH_FINDINGS

DATASETS = DATASET_NAMES  # the data set names, in pipeline order

__all__ = [
    "CHEXPERT_5X200_CLASSES",
    "CHEXPERT_FINDINGS",
    "DATASETS",
    "NIH_FINDINGS",
    "BadInputError",
    "fetch_dataset",
    "prepare_dataset",
]


def __getattr__(name: str):
    if name == "fetch_dataset":
        from ace_lora.data.fetch import fetch_dataset

        return fetch_dataset
    raise AttributeError(f"module 'ace_lora.data' has no attribute {name!r}")
