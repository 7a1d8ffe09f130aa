"""Loading benchmarks: the manifest rows of the split, classes and task a benchmark of the registry declares.

The benchmarks themselves (data set, task, split, classes, domain, filter, positive class) are declared in
:mod:`ace_lora.registry`. ``load_benchmark(name, processed_root)`` returns the benchmark and the manifest rows of its
split, checked: unknown names list the known ones, an unprepared data set names the ``prepare`` command to run, an
empty split or a missing column is an error.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ace_lora import registry
from ace_lora.registry import BENCHMARKS, benchmarks_of

__all__ = [
    "BENCHMARKS",
    "BenchmarkError",
    "benchmarks_of",
    "get_benchmark",
    "load_benchmark",
    "load_boxes",
    "read_manifest",
]


class BenchmarkError(ValueError):
    """A benchmark that cannot be loaded; the message says why and what to run."""


def get_benchmark(name: str) -> registry.Benchmark:
    """The registry's benchmark ``name``; :class:`BenchmarkError` lists the known ones."""
    try:
        return registry.get_benchmark(name)
    except registry.RegistryError as err:
        raise BenchmarkError(str(err)) from None


def read_manifest(dataset: str, processed_root: str | Path) -> pd.DataFrame:
    """The whole manifest of a prepared data set; a clear error if ``prepare`` has not run."""
    path = Path(processed_root) / dataset / "manifest.csv"
    if not path.is_file():
        raise BenchmarkError(f"{path}: prepared data not found; run `python -m ace_lora prepare {dataset}`")
    return pd.read_csv(
        path,
        dtype={"patient_id": str, "study_id": str, "label": str},
        keep_default_na=False,
        na_values={"orig_width": [""], "orig_height": [""]},
    )


def load_benchmark(
    name: str, processed_root: str | Path, split: str | None = None
) -> tuple[registry.Benchmark, pd.DataFrame]:
    """(spec, manifest rows of the benchmark's split) — ``split`` overrides the spec's (e.g. ``train`` for
    the data-efficient segmentation/detection heads). The index is reset; ``image`` paths are relative to
    ``spec.root(processed_root)``."""
    spec = get_benchmark(name)
    manifest = read_manifest(spec.dataset, processed_root)
    path = spec.root(processed_root) / "manifest.csv"
    missing = [c for c in spec.columns if c not in manifest.columns]
    if missing:
        raise BenchmarkError(
            f"{path}: missing column(s) {missing} needed by benchmark {name}; "
            f"re-run `python -m ace_lora prepare {spec.dataset}`"
        )
    split = split or spec.split
    rows = manifest[manifest["split"] == split]
    for column, value in spec.filter.items():
        rows = rows[rows[column] == value]
    if spec.task in ("multiclass", "binary"):
        rows = rows[rows["label"].isin(spec.classes)]
    if rows.empty:
        raise BenchmarkError(
            f"{path}: benchmark {name} has no rows in split {split!r}"
            + (f" with {dict(spec.filter)}" if spec.filter else "")
            + f" (splits present: {sorted(manifest['split'].unique())})"
        )
    return spec, rows.reset_index(drop=True)


def load_boxes(processed_root: str | Path, dataset: str = "rsna") -> pd.DataFrame:
    """``boxes.csv`` of a detection data set: image, x, y, width, height (original pixels)."""
    path = Path(processed_root) / dataset / "boxes.csv"
    if not path.is_file():
        raise BenchmarkError(f"{path}: boxes not found; run `python -m ace_lora prepare {dataset}`")
    return pd.read_csv(path)
