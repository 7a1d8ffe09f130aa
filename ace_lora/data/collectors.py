"""The per-data-set half of ``prepare``: one collector per data set of the registry (:mod:`ace_lora.registry`).

A collector reads the raw folder's label tables (found by the registry's :class:`~ace_lora.registry.Table` names)
and returns a :class:`Collected`: the images to decode (:class:`Item`, with their manifest fields), the protocol
notes of ``prepare_report.json`` and, for detection, the boxes. The ``split`` of an image is the collector's only
for the rules that read it from the data set's own files (``official``: the registry's ``split.names``;
``list_head``: the head of a list); ``single`` and ``patient_hash`` splits are assigned by ``prepare``.

:data:`COLLECTORS` maps every registry data set name to its collector; importing this module fails, naming the
difference, when the two disagree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ace_lora.config import DataConfig
from ace_lora.data.readers import (
    CHEXPERT_5X200_CLASSES,
    BadInputError,
    check_names,
    drop_duplicates,
    read_chexpert_table,
    read_list,
    read_mimic_tables,
    read_nih_table,
    read_rsna_labels,
    read_siim_rle,
    read_table,
    report_text,
    select_chexpert_5x200,
    siim_image_table,
)
from ace_lora.io import within
from ace_lora.registry import DATASET_NAMES, LC25000_CLASSES, Dataset, RegistryError, Table, get_benchmark

CHEXPERT_PER_CLASS = 200
#: Suffixes ``read_image`` decodes; histopathology tables name their files, which may be any raster format.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp"}
log = logging.getLogger(__name__)


class PrepareError(RuntimeError):
    """The raw folder does not have the expected layout (message says what is missing and where)."""


@dataclass
class Item:
    """One image to decode: where it is, where it goes, and its manifest fields."""

    source: Path
    image: str  # relative output path, images/...png
    fields: dict
    mode: str = "L"  # L: X-ray, RGB: histopathology
    rles: list | None = None  # SIIM components (None: no mask column)
    rle_source: str = ""
    rle_rows: list = field(default_factory=list)
    header_ids: bool = False  # take patient/study IDs from the DICOM header (SIIM)
    square: bool = False  # cache at size x size (training pairs: the reference's one training resize)


@dataclass
class Collected:
    """What a collector found: the images to decode (in manifest order), the ``protocol`` notes of
    prepare_report.json (plain JSON values) and the detection boxes (``patientId,x,y,width,height``; RSNA)."""

    items: list[Item]
    protocol: dict = field(default_factory=dict)
    boxes: pd.DataFrame | None = None


class Issues:
    """Bad inputs: raise (on_bad_input=error) or record and skip (skip). Also the ``on_bad`` of the table readers."""

    def __init__(self, mode: str, raw_dir: Path):
        self.mode = mode
        self.raw_dir = raw_dir
        self.skipped: list[dict] = []

    def __call__(self, err: BadInputError) -> None:
        if self.mode != "skip":
            raise err
        path = Path(err.path)
        shown = (
            Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.raw_dir))).as_posix()
            if within(self.raw_dir, path)
            else path.name
        )
        reason = err.reason.replace(str(self.raw_dir), self.raw_dir.name)  # no machine path in the report
        self.skipped.append({"file": shown, "row": err.row, "kind": err.kind, "reason": reason})
        log.warning("skipped %s", err)

    def lookup(
        self,
        files: dict[str, Path],
        key: str,
        table: Path,
        row: int | None,
        raw_dir: Path,
        what: str = "image",
        shown: str | None = None,
    ) -> Path | None:
        """The file a table row names; ``None``, reported as bad input naming the table and row, when it is absent."""
        path = files.get(key)
        if path is None:
            self(BadInputError(table, f"{what} {shown or key} not found under {raw_dir}", row, kind="missing_file"))
        return path

    def report(self) -> dict:
        """The ``skipped`` entry of prepare_report.json (a stable format: count, by_reason, inputs)."""
        inputs = sorted(self.skipped, key=lambda k: (k["file"], k["row"] or 0, k["kind"], k["reason"]))
        by_reason: dict[str, int] = {}
        for item in inputs:
            by_reason[item["kind"]] = by_reason.get(item["kind"], 0) + 1
        return {"count": len(inputs), "by_reason": dict(sorted(by_reason.items())), "inputs": inputs}


# ------------------------------------------------------------------------------------------ finding files


def find_table(raw_dir: Path, table: Table, max_depth: int = 3) -> Path:
    """The shallowest file within ``max_depth`` folders below ``raw_dir`` called by the first of the registry
    ``table``'s names that is present (tables sit near the top; the depth limit keeps this fast beside hundreds of
    thousands of images)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(raw_dir):
        depth = len(Path(root).relative_to(raw_dir).parts)
        if depth >= max_depth:
            dirs.clear()
        found += [Path(root, f) for f in files if f in table.names]
    for name in table.names:
        hits = sorted((p for p in found if p.name == name), key=lambda p: (len(p.parts), str(p)))
        if hits:
            return hits[0]
    raise PrepareError(
        f"{raw_dir}: no {table.what} found (looked for {', '.join(table.names)} up to {max_depth} folders below it)"
    )


def index_files(raw_dir: Path, suffixes: set[str], key: Callable[[Path], str] = lambda p: p.stem) -> dict[str, Path]:
    """Map key(file) -> path for every file with one of ``suffixes`` under ``raw_dir`` (first in sorted order wins)."""
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(raw_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.suffix.lower() in suffixes:
                out.setdefault(key(path), path)
    return out


def _suffixes(dataset: Dataset, *kinds: str) -> set[str]:
    """The registry's file suffixes of ``kinds`` (``images``, ``reports``) of ``dataset``."""
    return {s for kind in kinds for s in dataset.files[kind]}


class _Record(dict):
    """A table row as a dict whose identifier-like keys also read as attributes."""

    __getattr__ = dict.__getitem__


# ---------------------------------------------------------------------------------------------- collect


def collect_mimic(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    tables = {t.key: find_table(raw_dir, t) for t in dataset.tables}
    df = read_mimic_tables(tables["metadata"], tables["split"], tables["chexpert"], on_bad=issues)
    views = df["ViewPosition"].fillna("").astype(str).str.strip().str.upper()
    notes = {"images_in_metadata": int(len(df))}
    df = df[views.isin(["AP", "PA"])]
    notes["frontal_images"] = int(len(df))
    notes["frontal_studies_without_chexpert_labels"] = int((~df["has_labels"]).sum())
    files = index_files(raw_dir, _suffixes(dataset, "images", "reports"), key=lambda p: p.name)  # one walk
    texts: dict[Path, str | tuple] = {}
    items = []
    for rec in df.to_dict("records"):
        rec = _Record(rec)
        row = int(rec.row)
        split = dataset.split.names.get(str(rec.split).strip())
        if split is None:
            issues(
                BadInputError(
                    tables["metadata"],
                    f"dicom_id {rec.dicom_id} has no official split (got {rec.split!r} in {tables['split'].name})",
                    row,
                )
            )
            continue
        source = issues.lookup(files, f"{rec.dicom_id}.jpg", tables["metadata"], row, raw_dir)
        if source is None:
            continue
        report = issues.lookup(files, f"s{rec.study_id}.txt", tables["metadata"], row, raw_dir, what="report")
        if report is None:
            continue
        if report not in texts:  # one report per study, shared by its images
            texts[report] = _report_text(report)
        text = texts[report]
        if isinstance(text, tuple):  # every image of the study is reported (and counted when skipped)
            issues(
                BadInputError(
                    report, f"{text[1]} (image {rec.dicom_id}, {tables['metadata'].name} row {row})", kind=text[0]
                )
            )
            continue
        labels = {c: int(rec[c]) for c in dataset.findings}
        items.append(
            Item(
                source,
                f"images/{rec.dicom_id}.png",
                {
                    "split": split,
                    "patient_id": str(rec.subject_id),
                    "study_id": str(rec.study_id),
                    **labels,
                    "text": text,
                },
                square=True,
            )
        )
    return Collected(items, notes)


def _report_text(report: Path) -> str | tuple[str, str]:
    """The text of a MIMIC report, or ``(kind, reason)`` when it cannot serve as a training pair's text."""
    try:
        text = report_text(report.read_text(errors="replace"))
    except OSError as err:
        return ("unreadable", f"cannot read report ({err})")
    return text or (
        "empty_report",
        "the report is empty (a training pair needs text); restore the file or drop the study",
    )


def collect_nih14(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    table_path = find_table(raw_dir, dataset.table("labels"))
    test_path = find_table(raw_dir, dataset.table("test_list"))
    table = read_nih_table(table_path, on_bad=issues).set_index("Image Index")
    test_list = read_list(test_path)
    # the head of the official test list (docs/method.md#training), extended to the end of the last patient so
    # that the val and test splits stay patient-disjoint (the list is sorted by image name = patient ID first).
    n_val = int(np.ceil(dataset.split.fraction * len(test_list)))
    patient_of = lambda name: name.split("_")[0]  # noqa: E731
    while 0 < n_val < len(test_list) and patient_of(test_list[n_val]) == patient_of(test_list[n_val - 1]):
        n_val += 1
    notes = {
        "test_list": len(test_list),
        "val_images": n_val,
        "val_rule": f"first {dataset.split.fraction:.0%} of {test_path.name}, extended to the last patient's "
        "last image",
        "train_val_list": "not cached (training uses MIMIC; NIH is validation only)",
    }
    images = index_files(raw_dir, _suffixes(dataset, "images"), key=lambda p: p.name)
    listed = set(read_table(table_path, ["Image Index"])["Image Index"].astype(str).str.strip())
    items = []
    for line, name in enumerate(test_list, start=1):
        if name not in table.index and name in listed:  # a table row the reader dropped (and reported)
            continue
        if name not in table.index:
            issues(BadInputError(test_path, f"image {name} is not in {table_path.name}", line, kind="missing_file"))
            continue
        source = issues.lookup(images, name, test_path, line, raw_dir)
        if source is None:
            continue
        rec = table.loc[name]
        items.append(
            Item(
                source,
                f"images/{Path(name).stem}.png",
                {
                    "split": "val" if line <= n_val else "test",
                    "patient_id": str(rec["Patient ID"]),
                    "study_id": Path(name).stem,
                    **{c: int(rec[c]) for c in dataset.findings},
                },
            )
        )
    return Collected(items, notes)


def collect_chexpert(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    table_path = find_table(raw_dir, dataset.table("labels"))
    table = read_chexpert_table(table_path, on_bad=issues)
    picked, counts = select_chexpert_5x200(table, cfg.chexpert_seed, CHEXPERT_PER_CLASS, CHEXPERT_5X200_CLASSES)
    notes = {"per_class": counts, "sample_seed": cfg.chexpert_seed}
    short = {c: v["available"] for c, v in counts.items() if v["available"] < CHEXPERT_PER_CLASS}
    if short:
        notes["fewer_than_200_available"] = short
    bases = [table_path.parent.parent, table_path.parent, raw_dir]
    items = []
    for rec in picked.itertuples(index=False):
        rel = Path(str(rec.Path))
        candidates = [b / rel for b in bases]
        if len(rel.parts) > 1:  # Path starts with the archive folder (CheXpert-v1.0-small/...) = train.csv's folder
            candidates.append(table_path.parent / Path(*rel.parts[1:]))
        source = next((c for c in candidates if within(raw_dir, c) and c.is_file()), None)
        if source is None:
            issues(
                BadInputError(table_path, f"image {rel} not found under {raw_dir}", int(rec.row), kind="missing_file")
            )
            continue
        name = f"{rec.patient_id}_{Path(rec.study_id).name}_{rel.stem}"
        items.append(
            Item(
                source,
                f"images/{name}.png",
                {"patient_id": rec.patient_id, "study_id": rec.study_id, "label": rec.label},
            )
        )
    return Collected(items, notes)


def collect_rsna(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    table_path = find_table(raw_dir, dataset.table("labels"))
    patients, boxes = read_rsna_labels(table_path, on_bad=issues)
    notes = {"patients": int(len(patients)), "positive": int(patients["Target"].sum()), "boxes": int(len(boxes))}
    images = index_files(raw_dir, _suffixes(dataset, "images"))
    first_row = {}
    for i, pid in enumerate(pd.read_csv(table_path, usecols=["patientId"])["patientId"].astype(str), start=1):
        first_row.setdefault(pid.strip(), i)
    benchmark = get_benchmark("rsna")
    items = []
    for rec in patients.itertuples(index=False):
        source = issues.lookup(
            images, rec.patientId, table_path, first_row.get(rec.patientId), raw_dir, shown=f"{rec.patientId}.dcm"
        )
        if source is None:
            continue
        items.append(
            Item(
                source,
                f"images/{rec.patientId}.png",
                {
                    "patient_id": rec.patientId,
                    "study_id": rec.patientId,
                    "label": benchmark.positive if rec.Target else benchmark.negative_class,
                },
            )
        )
    return Collected(items, notes, boxes)


def collect_siim(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    table_path = find_table(raw_dir, dataset.table("labels"))
    table = siim_image_table(read_siim_rle(table_path, on_bad=issues), source=table_path, on_bad=issues)
    images = index_files(raw_dir, _suffixes(dataset, "images"))
    notes = {
        "rle_table": table_path.name,
        "images_in_table": int(len(table)),
        "positive_in_table": int(table["positive"].sum()),
        "dicoms_without_label_row": int(len(set(images) - set(table["ImageId"]))),
    }
    items = []
    for rec in table.itertuples(index=False):
        source = issues.lookup(images, rec.ImageId, table_path, rec.rows[0], raw_dir, shown=f"{rec.ImageId}.dcm")
        if source is None:
            continue
        items.append(
            Item(
                source,
                f"images/{rec.ImageId}.png",
                {"label": rec.label},
                rles=list(rec.rles),
                rle_source=str(table_path),
                rle_rows=list(rec.rle_rows),
                header_ids=True,
            )
        )
    return Collected(items, notes)


def collect_mhist(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    table_path = find_table(raw_dir, dataset.table("labels"))
    table = read_table(table_path, ["Image Name", "Majority Vote Label", "Partition"], dtype=str)
    table["row"] = np.arange(1, len(table) + 1)
    table["Image Name"] = table["Image Name"].astype(str).str.strip()
    table = check_names(table, "Image Name", table_path, issues)
    table = drop_duplicates(table, ["Image Name"], table_path, issues)
    images = index_files(raw_dir, IMAGE_SUFFIXES - {".dcm"}, key=lambda p: p.name)
    classes, splits = get_benchmark("mhist").classes, dataset.split.names
    items = []
    for rec in table.to_dict("records"):
        line = int(rec["row"])
        name, label = str(rec["Image Name"]).strip(), str(rec["Majority Vote Label"]).strip()
        part = str(rec["Partition"]).strip().lower()
        if label not in classes:
            issues(
                BadInputError(
                    table_path, f"Majority Vote Label must be one of {classes}, got {label!r}", line, kind="bad_label"
                )
            )
            continue
        if part not in splits:
            issues(BadInputError(table_path, f"Partition must be {' or '.join(splits)}, got {part!r}", line))
            continue
        source = issues.lookup(images, name, table_path, line, raw_dir)
        if source is None:
            continue
        stem = Path(name).stem
        items.append(
            Item(
                source,
                f"images/{stem}.png",
                {"split": splits[part], "patient_id": stem, "study_id": stem, "label": label},
                mode="RGB",
            )
        )
    return Collected(items)


def collect_lc25000(dataset: Dataset, raw_dir: Path, cfg: DataConfig, issues: Issues) -> Collected:
    folders: dict[str, Path] = {}
    for root, dirs, _ in os.walk(raw_dir):
        dirs.sort()
        for d in dirs:
            if d in dataset.folders and d not in folders:
                folders[d] = Path(root, d)
    missing = sorted(set(dataset.folders) - set(folders))
    if missing:
        raise PrepareError(
            f"{raw_dir}: no LC25000 class folder(s) {missing} found "
            "(expected lung_colon_image_set/{lung,colon}_image_sets/<class>/*.jpeg)"
        )
    items = []
    for label in dataset.folders:
        files = sorted(p for p in folders[label].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES - {".dcm"})
        if not files:
            raise PrepareError(f"{folders[label]}: no images")
        for path in files:
            items.append(
                Item(
                    path,
                    f"images/{label}/{path.stem}.png",
                    {"patient_id": path.stem, "study_id": path.stem, "label": label, "organ": LC25000_CLASSES[label]},
                    mode="RGB",
                )
            )
    return Collected(items)


#: Registry data set name -> its collector.
COLLECTORS: dict[str, Callable[[Dataset, Path, DataConfig, Issues], Collected]] = {
    "mimic": collect_mimic,
    "nih14": collect_nih14,
    "chexpert": collect_chexpert,
    "rsna": collect_rsna,
    "siim": collect_siim,
    "mhist": collect_mhist,
    "lc25000": collect_lc25000,
}

if set(COLLECTORS) != set(DATASET_NAMES):
    raise RegistryError(
        f"ace_lora/data/collectors.py: the collectors ({', '.join(COLLECTORS)}) do not match the "
        f"registry's data sets ({', '.join(DATASET_NAMES)}); add a collect_<name> function to "
        f"COLLECTORS for each data set declared in ace_lora/registry.py (and remove the others)"
    )
