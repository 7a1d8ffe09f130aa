"""Data sets: fetch (raw layouts), prepare (one processed format), benchmarks and torch Datasets.

``fetch_dataset`` lives in :mod:`ace_lora.data.fetch` and is imported on first use.
"""

from __future__ import annotations

from ace_lora.data.prepare import DATASETS, prepare_dataset
from ace_lora.data.readers import CHEXPERT_5X200_CLASSES, CHEXPERT_FINDINGS, NIH_FINDINGS, BadInputError

__all__ = ["CHEXPERT_5X200_CLASSES", "CHEXPERT_FINDINGS", "DATASETS", "NIH_FINDINGS", "BadInputError",
           "fetch_dataset", "prepare_dataset"]


def __getattr__(name: str):
    if name == "fetch_dataset":
        from ace_lora.data.fetch import fetch_dataset

        return fetch_dataset
    raise AttributeError(f"module 'ace_lora.data' has no attribute {name!r}")
