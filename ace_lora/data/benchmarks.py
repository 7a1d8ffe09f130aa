"""Benchmark registry: which prepared data set, split, classes and task each evaluation unit uses.

``load_benchmark(name, processed_root)`` returns the spec and the manifest rows of its split, checked: unknown
names list the known ones, an unprepared data set names the ``prepare`` command to run, an empty split or a
missing column is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ace_lora.data.readers import CHEXPERT_5X200_CLASSES, CHEXPERT_FINDINGS, NIH_FINDINGS

TASKS = ("multiclass", "binary", "multilabel", "segmentation", "detection")
DOMAINS = ("chest", "histopathology")


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message says why and what to run."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """One evaluation unit over a prepared data set.

    ``classes``: class names (the manifest's ``label`` values for single-label tasks; the 0/1 columns for
    multilabel ones). ``label_column``: ``label`` (single-label), ``None`` (multilabel: ``classes`` are columns),
    ``mask`` (segmentation), ``boxes.csv`` rows for detection. ``filter``: column -> value rows must match
    (e.g. LC25000's organ). ``positive``: the positive class of a binary task.
    """

    name: str
    dataset: str
    task: str
    classes: tuple[str, ...]
    domain: str = "chest"
    split: str = "test"
    label_column: str | None = "label"
    filter: dict = field(default_factory=dict)
    positive: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.task not in TASKS:
            raise BenchmarkError(f"{self.name}: task {self.task!r} is not one of {TASKS}")
        if self.domain not in DOMAINS:
            raise BenchmarkError(f"{self.name}: domain {self.domain!r} is not one of {DOMAINS}")
        if self.positive is not None and self.positive not in self.classes:
            raise BenchmarkError(f"{self.name}: positive {self.positive!r} is not among {self.classes}")

    def root(self, processed_root: str | Path) -> Path:
        """The prepared data set folder (manifest paths are relative to it)."""
        return Path(processed_root) / self.dataset

    @property
    def columns(self) -> list[str]:
        """Manifest columns the benchmark needs."""
        needed = ["image", "split"]
        if self.task == "multilabel":
            needed += list(self.classes)
        elif self.label_column:
            needed.append(self.label_column)
        if self.task in ("segmentation", "detection") and "label" not in needed:
            needed.append("label")
        return needed + [c for c in self.filter if c not in needed]


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec("chexpert5x200", "chexpert", "multiclass", tuple(CHEXPERT_5X200_CLASSES),
          description="CheXpert 5x200 zero-shot classification (GLoRIA/MGCA protocol)"),
    BenchmarkSpec("rsna", "rsna", "binary", ("Normal", "Pneumonia"), positive="Pneumonia",
          description="RSNA Pneumonia zero-shot classification, seeded patient-disjoint test split"),
    BenchmarkSpec("siim", "siim", "binary", ("Normal", "Pneumothorax"), positive="Pneumothorax",
          description="SIIM-ACR Pneumothorax zero-shot classification, 30% seeded test split"),
    BenchmarkSpec("mhist", "mhist", "binary", ("HP", "SSA"), domain="histopathology", positive="SSA",
          description="MHIST test partition, hyperplastic polyp vs sessile serrated adenoma"),
    BenchmarkSpec("lc25000_lung", "lc25000", "multiclass", ("lung_aca", "lung_n", "lung_scc"), domain="histopathology",
          filter={"organ": "lung"}, description="LC25000 lung, 3-way zero-shot"),
    BenchmarkSpec("lc25000_colon", "lc25000", "binary", ("colon_aca", "colon_n"), domain="histopathology",
          filter={"organ": "colon"}, positive="colon_aca", description="LC25000 colon, 2-way zero-shot"),
    BenchmarkSpec("nih14", "nih14", "multilabel", tuple(NIH_FINDINGS), split="val", label_column=None,
          description="NIH ChestX-ray14 validation (first 20% of test_list.txt), model selection only"),
    BenchmarkSpec("siim_seg", "siim", "segmentation", ("Normal", "Pneumothorax"), label_column="mask",
          positive="Pneumothorax", description="SIIM pneumothorax segmentation (masks = union of all RLE rows)"),
    BenchmarkSpec("rsna_det", "rsna", "detection", ("Normal", "Pneumonia"), label_column=None, positive="Pneumonia",
          filter={"label": "Pneumonia"},
          description="RSNA pneumonia detection, positive images only; boxes in boxes.csv (original pixels)"),
    BenchmarkSpec("mimic", "mimic", "multilabel", tuple(CHEXPERT_FINDINGS), split="val", label_column=None,
          description="MIMIC-CXR official validate split, 14 CheXpert findings (training data; validation only)"),
]}


def benchmarks_of(dataset: str) -> list[str]:
    """Names of the benchmarks evaluated on prepared data set ``dataset`` (registry order)."""
    return [name for name, spec in BENCHMARKS.items() if spec.dataset == dataset]


def get_benchmark(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def read_manifest(dataset: str, processed_root: str | Path) -> pd.DataFrame:
    """The whole manifest of a prepared data set; a clear error if ``prepare`` has not run."""
    path = Path(processed_root) / dataset / "manifest.csv"
    if not path.is_file():
        raise BenchmarkError(f"{path}: prepared data not found; run `python -m ace_lora prepare {dataset}`")
    return pd.read_csv(path, dtype={"patient_id": str, "study_id": str, "label": str},
                       keep_default_na=False, na_values={"orig_width": [""], "orig_height": [""]})


def load_benchmark(name: str, processed_root: str | Path, split: str | None = None
                   ) -> tuple[BenchmarkSpec, pd.DataFrame]:
    """(spec, manifest rows of the benchmark's split) — ``split`` overrides the spec's (e.g. ``train`` for
    the data-efficient segmentation/detection heads). The index is reset; ``image`` paths are relative to
    ``spec.root(processed_root)``."""
    spec = get_benchmark(name)
    manifest = read_manifest(spec.dataset, processed_root)
    path = spec.root(processed_root) / "manifest.csv"
    missing = [c for c in spec.columns if c not in manifest.columns]
    if missing:
        raise BenchmarkError(f"{path}: missing column(s) {missing} needed by benchmark {name}; "
                             f"re-run `python -m ace_lora prepare {spec.dataset}`")
    split = split or spec.split
    rows = manifest[manifest["split"] == split]
    for column, value in spec.filter.items():
        rows = rows[rows[column] == value]
    if spec.task in ("multiclass", "binary"):
        rows = rows[rows["label"].isin(spec.classes)]
    if rows.empty:
        raise BenchmarkError(f"{path}: benchmark {name} has no rows in split {split!r}"
                             + (f" with {spec.filter}" if spec.filter else "")
                             + f" (splits present: {sorted(manifest['split'].unique())})")
    return spec, rows.reset_index(drop=True)


def load_boxes(processed_root: str | Path, dataset: str = "rsna") -> pd.DataFrame:
    """``boxes.csv`` of a detection data set: image, x, y, width, height (original pixels)."""
    path = Path(processed_root) / dataset / "boxes.csv"
    if not path.is_file():
        raise BenchmarkError(f"{path}: boxes not found; run `python -m ace_lora prepare {dataset}`")
    return pd.read_csv(path)
