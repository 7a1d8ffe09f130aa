"""The ``prepare`` stage: raw data set (its distributed layout, docs/method.md#data-sets) -> one processed format.

``prepare_dataset(name, raw_root, out_dir, data_cfg)`` reads ``raw_root/<name>/`` in its distributed layout and
writes ``out_dir`` (normally ``{processed}/<name>/``) atomically:

- ``manifest.csv``: ``image`` (``images/...png``, 8-bit, grayscale for X-rays, RGB for histopathology, shortest
  side = ``data_cfg.image_size``, bicubic), ``split``, ``patient_id``, ``study_id``, ``orig_width``,
  ``orig_height`` and the data set's label columns (``label``; or one 0/1 column per finding; ``text``; ``mask``).
- ``boxes.csv`` (RSNA): ``image,x,y,width,height`` in original pixels.
- ``prepare_report.json``: counts per split and class, seeds, protocol notes, skipped inputs
  (``{"skipped": {"count": N, "by_reason": {kind: n}, "inputs": [{"file", "row", "kind", "reason"}]}}``, files
  relative to the raw folder). It depends only on the inputs: timings and machine paths go to the log.

The folder is a pure function of the raw files and ``data`` params (byte-identical on a rerun). The RSNA and SIIM
splits hash each patient id with ``data.split_seed`` (:func:`split_by_group`), so dropping or adding one patient
moves no other; CheXpert 5x200 sampling has its own seed, ``data.chexpert_seed``.

Each data set has one ``_collect_<name>`` function (tables -> work items, protocol selection) and, where the
protocol needs it, a split assigned after decoding (patient IDs of SIIM come from the DICOM headers).
Files are found by name anywhere under the raw folder, so the official archives' nesting
(``CheXpert-v1.0-small/``, ``images_001/images/``, ``stage_2_train_images/`` ...) does not matter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.config import DataConfig
from ace_lora.data.readers import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_FINDINGS,
    NIH_FINDINGS,
    BadInputError,
    check_names,
    decode_rle_union,
    drop_duplicates,
    read_chexpert_table,
    read_dicom_header,
    read_image,
    read_list,
    read_mimic_tables,
    read_nih_table,
    read_rsna_labels,
    read_siim_rle,
    read_table,
    report_text,
    rle_extent,
    select_chexpert_5x200,
    siim_image_table,
)
from ace_lora.io import atomic_dir, within
from ace_lora.progress import progress

DATASETS = ("mimic", "nih14", "chexpert", "rsna", "siim", "mhist", "lc25000")

# Split fractions (train, val, test) of the seeded patient-disjoint splits.
RSNA_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
SIIM_FRACTIONS = {"train": 0.60, "val": 0.10, "test": 0.30}
NIH_VAL_FRACTION = 0.20
CHEXPERT_PER_CLASS = 200
LC25000_CLASSES = {"lung_aca": "lung", "lung_n": "lung", "lung_scc": "lung", "colon_aca": "colon", "colon_n": "colon"}
MHIST_CLASSES = ("HP", "SSA")
MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp"}
log = logging.getLogger(__name__)


class PrepareError(RuntimeError):
    """The raw folder does not have the expected layout (message says what is missing and where)."""


@dataclass
class _Item:
    """One image to decode: where it is, where it goes, and its manifest fields."""

    source: Path
    image: str                       # relative output path, images/...png
    fields: dict
    mode: str = "L"                  # L: X-ray, RGB: histopathology
    rles: list | None = None         # SIIM components (None: no mask column)
    rle_source: str = ""
    rle_rows: list = field(default_factory=list)
    header_ids: bool = False         # take patient/study IDs from the DICOM header (SIIM)
    square: bool = False             # cache at size x size (training pairs: the reference's one training resize)


class _Issues:
    """Bad inputs: raise (on_bad_input=error) or record and skip (skip). Also the ``on_bad`` of the table readers."""

    def __init__(self, mode: str, raw_dir: Path):
        self.mode = mode
        self.raw_dir = raw_dir
        self.skipped: list[dict] = []

    def __call__(self, err: BadInputError) -> None:
        if self.mode != "skip":
            raise err
        path = Path(err.path)
        shown = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(self.raw_dir))).as_posix() \
            if within(self.raw_dir, path) else path.name
        reason = err.reason.replace(str(self.raw_dir), self.raw_dir.name)  # no machine path in the report
        self.skipped.append({"file": shown, "row": err.row, "kind": err.kind, "reason": reason})
        log.warning("skipped %s", err)

    def lookup(self, files: dict[str, Path], key: str, table: Path, row: int | None, raw_dir: Path,
               what: str = "image", shown: str | None = None) -> Path | None:
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


def _find(raw_dir: Path, patterns: list[str], what: str, max_depth: int = 3) -> Path:
    """The shallowest file within ``max_depth`` folders below ``raw_dir`` matching the first pattern that matches
    anything (tables sit near the top; the depth limit keeps this fast beside hundreds of thousands of images)."""
    import fnmatch

    found: list[Path] = []
    for root, dirs, files in os.walk(raw_dir):
        depth = len(Path(root).relative_to(raw_dir).parts)
        if depth >= max_depth:
            dirs.clear()
        found += [Path(root, f) for f in files if any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    for pattern in patterns:
        hits = sorted((p for p in found if fnmatch.fnmatch(p.name, pattern)), key=lambda p: (len(p.parts), str(p)))
        if hits:
            return hits[0]
    raise PrepareError(f"{raw_dir}: no {what} found (looked for {', '.join(patterns)} up to {max_depth} folders "
                       "below it)")


def _index(raw_dir: Path, suffixes: set[str], key: Callable[[Path], str] = lambda p: p.stem) -> dict[str, Path]:
    """Map key(file) -> path for every file with one of ``suffixes`` under ``raw_dir`` (first in sorted order wins)."""
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(raw_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            if path.suffix.lower() in suffixes:
                out.setdefault(key(path), path)
    return out


# ---------------------------------------------------------------------------------------------- splits


def group_uniform(group: str, seed: int) -> float:
    """A number in [0, 1) that depends only on (``seed``, ``group``): the first 8 bytes of sha256("seed:group")."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_by_group(groups: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Seeded split disjoint by group (patient): a group goes to the split whose cumulative-fraction interval holds
    :func:`group_uniform` of its id.

    A group's split depends on nothing but its id and the seed: neither row order nor which other groups are
    present (skipping one bad patient moves no other). Class balance holds in expectation, not exactly.
    """
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    bounds = bounds / bounds[-1]
    ids = groups.astype(str)
    assigned = {g: names[min(int(np.searchsorted(bounds, group_uniform(g, seed), side="right")), len(names) - 1)]
                for g in ids.unique()}
    return ids.map(assigned)


# ---------------------------------------------------------------------------------------------- collect


def _collect_mimic(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    tables = {k: _find(raw_dir, [f"mimic-cxr-2.0.0-{k}.csv.gz", f"mimic-cxr-2.0.0-{k}.csv"], f"MIMIC {k} table")
              for k in ("metadata", "split", "chexpert")}
    df = read_mimic_tables(tables["metadata"], tables["split"], tables["chexpert"], on_bad=issues)
    views = df["ViewPosition"].fillna("").astype(str).str.strip().str.upper()
    notes["images_in_metadata"] = int(len(df))
    df = df[views.isin(["AP", "PA"])]
    notes["frontal_images"] = int(len(df))
    notes["frontal_studies_without_chexpert_labels"] = int((~df["has_labels"]).sum())
    files = _index(raw_dir, {".jpg", ".txt"}, key=lambda p: p.name)  # one walk over the (large) tree
    texts: dict[Path, str] = {}
    items = []
    for rec in df.to_dict("records"):
        rec = _Record(rec)
        row = int(rec.row)
        split = MIMIC_SPLITS.get(str(rec.split).strip())
        if split is None:
            issues(BadInputError(tables["metadata"], f"dicom_id {rec.dicom_id} has no official split "
                                 f"(got {rec.split!r} in {tables['split'].name})", row))
            continue
        source = issues.lookup(files, f"{rec.dicom_id}.jpg", tables["metadata"], row, raw_dir)
        if source is None:
            continue
        report = issues.lookup(files, f"s{rec.study_id}.txt", tables["metadata"], row, raw_dir, what="report")
        if report is None:
            continue
        if report not in texts:  # one report per study, shared by its images
            try:
                texts[report] = report_text(report.read_text(errors="replace"))
            except OSError as err:
                texts[report] = ("unreadable", f"cannot read report ({err})")
            if not texts[report]:
                texts[report] = ("empty_report", "the report is empty (a training pair needs text); restore the "
                                 "file or drop the study")
        text = texts[report]
        if isinstance(text, tuple):  # every image of the study is reported (and counted when skipped)
            issues(BadInputError(report, f"{text[1]} (image {rec.dicom_id}, {tables['metadata'].name} row {row})",
                                 kind=text[0]))
            continue
        labels = {c: int(rec[c]) for c in CHEXPERT_FINDINGS}
        items.append(_Item(source, f"images/{rec.dicom_id}.png",
                           {"split": split, "patient_id": str(rec.subject_id), "study_id": str(rec.study_id),
                            **labels, "text": text}, square=True))
    return items


class _Record(dict):
    """A table row as a dict whose identifier-like keys also read as attributes."""

    __getattr__ = dict.__getitem__


def _collect_nih14(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    table_path = _find(raw_dir, ["Data_Entry_2017_v2020.csv*", "Data_Entry_2017*.csv*"], "NIH Data_Entry table")
    test_path = _find(raw_dir, ["test_list.txt"], "NIH test_list.txt")
    table = read_nih_table(table_path, on_bad=issues).set_index("Image Index")
    test_list = read_list(test_path)
    # first 20 % of the official test list (docs/method.md#training), extended to the end of the last patient so
    # that the val and test splits stay patient-disjoint (the list is sorted by image name = patient ID first).
    n_val = int(np.ceil(NIH_VAL_FRACTION * len(test_list)))
    patient_of = lambda name: name.split("_")[0]  # noqa: E731
    while 0 < n_val < len(test_list) and patient_of(test_list[n_val]) == patient_of(test_list[n_val - 1]):
        n_val += 1
    notes.update({"test_list": len(test_list), "val_images": n_val,
                  "val_rule": "first 20% of test_list.txt, extended to the last patient's last image",
                  "train_val_list": "not cached (training uses MIMIC; NIH is validation only)"})
    images = _index(raw_dir, {".png"}, key=lambda p: p.name)
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
        items.append(_Item(source, f"images/{Path(name).stem}.png",
                           {"split": "val" if line <= n_val else "test", "patient_id": str(rec["Patient ID"]),
                            "study_id": Path(name).stem, **{c: int(rec[c]) for c in NIH_FINDINGS}}))
    return items


def _collect_chexpert(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    table_path = _find(raw_dir, ["train.csv"], "CheXpert train.csv")
    table = read_chexpert_table(table_path, on_bad=issues)
    picked, counts = select_chexpert_5x200(table, cfg.chexpert_seed, CHEXPERT_PER_CLASS, CHEXPERT_5X200_CLASSES)
    notes["per_class"] = counts
    notes["sample_seed"] = cfg.chexpert_seed
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
            issues(BadInputError(table_path, f"image {rel} not found under {raw_dir}", int(rec.row),
                                 kind="missing_file"))
            continue
        name = f"{rec.patient_id}_{Path(rec.study_id).name}_{rel.stem}"
        items.append(_Item(source, f"images/{name}.png", {"split": "test", "patient_id": rec.patient_id,
                                                          "study_id": rec.study_id, "label": rec.label}))
    return items


def _collect_rsna(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    table_path = _find(raw_dir, ["stage_2_train_labels.csv*", "stage_1_train_labels.csv*"], "RSNA labels table")
    patients, boxes = read_rsna_labels(table_path, on_bad=issues)
    notes.update({"patients": int(len(patients)), "positive": int(patients["Target"].sum()), "boxes": int(len(boxes))})
    images = _index(raw_dir, {".dcm"})
    first_row = {}
    for i, pid in enumerate(pd.read_csv(table_path, usecols=["patientId"])["patientId"].astype(str), start=1):
        first_row.setdefault(pid.strip(), i)
    items = []
    for rec in patients.itertuples(index=False):
        source = issues.lookup(images, rec.patientId, table_path, first_row.get(rec.patientId), raw_dir,
                               shown=f"{rec.patientId}.dcm")
        if source is None:
            continue
        items.append(_Item(source, f"images/{rec.patientId}.png",
                           {"patient_id": rec.patientId, "study_id": rec.patientId,
                            "label": "Pneumonia" if rec.Target else "Normal"}))
    notes["_boxes"] = boxes
    return items


def _collect_siim(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    table_path = _find(raw_dir, ["stage_2_train.csv", "train-rle.csv", "train-rle.csv.gz"], "SIIM RLE table")
    table = siim_image_table(read_siim_rle(table_path, on_bad=issues), source=table_path, on_bad=issues)
    images = _index(raw_dir, {".dcm"})
    notes.update({"rle_table": table_path.name, "images_in_table": int(len(table)),
                  "positive_in_table": int(table["positive"].sum()),
                  "dicoms_without_label_row": int(len(set(images) - set(table["ImageId"])))})
    items = []
    for rec in table.itertuples(index=False):
        source = issues.lookup(images, rec.ImageId, table_path, rec.rows[0], raw_dir, shown=f"{rec.ImageId}.dcm")
        if source is None:
            continue
        items.append(_Item(source, f"images/{rec.ImageId}.png", {"label": rec.label}, rles=list(rec.rles),
                           rle_source=str(table_path), rle_rows=list(rec.rle_rows), header_ids=True))
    return items


def _collect_mhist(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    table_path = _find(raw_dir, ["annotations.csv"], "MHIST annotations.csv")
    table = read_table(table_path, ["Image Name", "Majority Vote Label", "Partition"], dtype=str)
    table["row"] = np.arange(1, len(table) + 1)
    table["Image Name"] = table["Image Name"].astype(str).str.strip()
    table = check_names(table, "Image Name", table_path, issues)
    table = drop_duplicates(table, ["Image Name"], table_path, issues)
    images = _index(raw_dir, IMAGE_SUFFIXES - {".dcm"}, key=lambda p: p.name)
    items = []
    for rec in table.to_dict("records"):
        line = int(rec["row"])
        name, label = str(rec["Image Name"]).strip(), str(rec["Majority Vote Label"]).strip()
        part = str(rec["Partition"]).strip().lower()
        if label not in MHIST_CLASSES:
            issues(BadInputError(table_path, f"Majority Vote Label must be one of {MHIST_CLASSES}, got {label!r}",
                                 line, kind="bad_label"))
            continue
        if part not in ("train", "test"):
            issues(BadInputError(table_path, f"Partition must be train or test, got {part!r}", line))
            continue
        source = issues.lookup(images, name, table_path, line, raw_dir)
        if source is None:
            continue
        stem = Path(name).stem
        items.append(_Item(source, f"images/{stem}.png", {"split": part, "patient_id": stem, "study_id": stem,
                                                          "label": label}, mode="RGB"))
    return items


def _collect_lc25000(raw_dir: Path, cfg: DataConfig, issues: _Issues, notes: dict) -> list[_Item]:
    folders: dict[str, Path] = {}
    for root, dirs, _ in os.walk(raw_dir):
        dirs.sort()
        for d in dirs:
            if d in LC25000_CLASSES and d not in folders:
                folders[d] = Path(root, d)
    missing = sorted(set(LC25000_CLASSES) - set(folders))
    if missing:
        raise PrepareError(f"{raw_dir}: no LC25000 class folder(s) {missing} found "
                           "(expected lung_colon_image_set/{lung,colon}_image_sets/<class>/*.jpeg)")
    items = []
    for label, organ in LC25000_CLASSES.items():
        files = sorted(p for p in folders[label].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES - {".dcm"})
        if not files:
            raise PrepareError(f"{folders[label]}: no images")
        for path in files:
            items.append(_Item(path, f"images/{label}/{path.stem}.png",
                               {"split": "test", "patient_id": path.stem, "study_id": path.stem, "label": label,
                                "organ": organ}, mode="RGB"))
    return items


_COLLECT = {"mimic": _collect_mimic, "nih14": _collect_nih14, "chexpert": _collect_chexpert, "rsna": _collect_rsna,
            "siim": _collect_siim, "mhist": _collect_mhist, "lc25000": _collect_lc25000}


# ---------------------------------------------------------------------------------------------- process


def _resize_shortest(img: Image.Image, size: int, resample: int, square: bool = False) -> Image.Image:
    """Shortest side to ``size``, long side ``int(size * long / short)`` (truncated, as torchvision's and
    open_clip's ``Resize(size)``), so the evaluation centre crop of the cache sits where the reference's does.

    ``square``: straight to ``size`` x ``size`` instead, as the reference's training transform resizes a training
    image; a training cache written so is not resampled again by the training transform (docs/method.md#training).
    """
    w, h = img.size
    if square:
        return img if (w, h) == (size, size) else img.resize((size, size), resample)
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, max(1, int(size * h / w)))
    else:
        new = (max(1, int(size * w / h)), size)
    return img.resize(new, resample)


def _process(item: _Item, out: Path, size: int) -> dict:
    """Decode, resize and write one image (and its mask); returns its manifest row.

    The per-image unit of work: it reads only ``item`` and writes only below ``out``.
    """
    if not within(out, out / item.image):
        raise BadInputError(item.source, f"output name {item.image!r} would leave the prepared folder", kind="bad_id")
    img = read_image(item.source, shortest=size)
    width, height = img.info.get("original_size", img.size)
    img = img.convert(item.mode)
    target = out / item.image
    target.parent.mkdir(parents=True, exist_ok=True)
    _resize_shortest(img, size, Image.Resampling.BICUBIC, square=item.square).save(target)
    row = {"image": item.image, **item.fields, "orig_width": width, "orig_height": height}
    if item.header_ids:
        header = read_dicom_header(item.source)
        stem = item.source.stem
        row["patient_id"] = str(header.get("PatientID", "") or stem).strip() or stem
        row["study_id"] = str(header.get("StudyInstanceUID", "") or stem).strip() or stem
    if item.rles is not None:
        row["mask"] = ""
        if item.rles:
            _check_mask_grid(item, width, height)
            mask = decode_rle_union(item.rles, height, width, source=item.rle_source, rows=item.rle_rows)
            mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
            mask_rel = "masks/" + Path(item.image).name
            (out / mask_rel).parent.mkdir(parents=True, exist_ok=True)
            _resize_shortest(mask_img, size, Image.Resampling.NEAREST).save(out / mask_rel)
            row["mask"] = mask_rel
    return row


def _check_mask_grid(item: _Item, width: int, height: int) -> None:
    """An RLE that runs past the image's pixel count means the image's size disagrees with the mask grid of the
    table: the DICOM is blamed (its RLE rows are named)."""
    try:
        extent = max(rle_extent(r) for r in item.rles)
    except ValueError:  # malformed RLE: decode_rle names the row
        return
    if extent > width * height:
        raise BadInputError(item.source, f"image is {width}x{height} ({width * height} pixels) but its masks in "
                            f"{Path(item.rle_source).name} rows {item.rle_rows} run to pixel {extent}: the DICOM's "
                            "size disagrees with the RLE grid; replace the file (or drop its rows)",
                            kind="mask_mismatch")


def _process_or_bad(item: _Item, out: Path, size: int) -> dict | tuple:
    """:func:`_process`, with a bad input returned as ``(path, reason, row, kind)`` (it crosses process
    boundaries)."""
    try:
        return _process(item, out, size)
    except BadInputError as err:
        return (err.path, err.reason, err.row, err.kind)


def _map(items: list[_Item], out: Path, size: int, workers: int) -> Iterator[tuple[int, dict | tuple]]:
    """``(index, _process_or_bad(item))`` for every item: in this process when ``workers`` is 1, else on a pool of
    ``workers`` processes (pydicom and the per-image Python hold the GIL: threads do not scale), in
    completion order.

    At most ``4 * workers`` items are in flight, so memory stays flat on data sets of 10^5 images; closing the
    iterator early (a bad input in ``error`` mode) cancels the rest.
    """
    if workers <= 1:
        for index, item in enumerate(items):
            yield index, _process_or_bad(item, out, size)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    todo = iter(enumerate(items))
    pending: dict = {}
    try:
        while True:
            for index, item in todo:
                pending[pool.submit(_process_or_bad, item, out, size)] = index
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Worker processes of the prepare stage: ``OMP_NUM_THREADS`` when set (Snakemake exports the rule's threads,
    capped at ``--cores``, as that variable), else every CPU this process may run on (a SLURM allocation, taskset)."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run(items: list[_Item], out: Path, size: int, issues: _Issues, workers: int, desc: str) -> list[dict]:
    """Process every item (:func:`_map`); rows in item order, whatever the worker count."""
    rows: list[dict | None] = [None] * len(items)
    # a worker process costs about a second to start: none for fewer than 32 images each
    workers = max(1, min(workers, len(items) // 32))
    results = _map(items, out, size, workers)
    try:
        for index, result in progress(results, desc, total=len(items), unit="img"):
            if isinstance(result, tuple):
                issues(BadInputError(*result))
            else:
                rows[index] = result
    finally:
        results.close()
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------------------------------------- report


def _counts(manifest: pd.DataFrame, name: str) -> dict:
    counts: dict = {"images": int(len(manifest)), "splits": {k: int(v) for k, v in
                                                            manifest["split"].value_counts().sort_index().items()}}
    if "label" in manifest:
        counts["classes"] = {s: {k: int(v) for k, v in g["label"].value_counts().sort_index().items()}
                             for s, g in manifest.groupby("split")}
    findings = CHEXPERT_FINDINGS if name == "mimic" else NIH_FINDINGS if name == "nih14" else []
    if findings:
        counts["positives"] = {s: {c: int(g[c].sum()) for c in findings} for s, g in manifest.groupby("split")}
    if "mask" in manifest:
        counts["masks"] = int((manifest["mask"].fillna("") != "").sum())
    if "patient_id" in manifest:
        counts["patients"] = int(manifest["patient_id"].nunique())
    return counts


def prepare_dataset(name: str, raw_root: Path, out_dir: Path, data_cfg: DataConfig, workers: int | None = None
                    ) -> dict:
    """Prepare data set ``name`` from ``raw_root/<name>/`` into ``out_dir``; returns the report (also written).

    ``workers``: image-decoding processes (default :func:`default_workers`); any count writes the same bytes.
    Bad inputs raise :class:`BadInputError` naming the file and row (``data_cfg.on_bad_input == "error"``) or are
    skipped and listed in the report (``"skip"``). ``out_dir`` is replaced only when everything succeeded.
    """
    if name not in _COLLECT:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    raw_dir = Path(raw_root) / name
    if not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: raw data set folder not found; run `python -m ace_lora fetch {name}` first")
    start = time.perf_counter()
    issues = _Issues(data_cfg.on_bad_input, raw_dir)
    notes: dict = {}
    items = _COLLECT[name](raw_dir, data_cfg, issues, notes)
    if not items:
        raise PrepareError(f"{raw_dir}: no usable images ({len(issues.skipped)} skipped: "
                           f"{issues.report()['by_reason']})")
    boxes = notes.pop("_boxes", None)
    workers = workers if workers is not None else default_workers()
    with atomic_dir(out_dir) as tmp:
        rows = _run(items, tmp, data_cfg.image_size, issues, workers, f"prepare {name}")
        if not rows:
            raise PrepareError(f"{raw_dir}: every image was skipped ({len(issues.skipped)}: "
                               f"{issues.report()['by_reason']})")
        manifest = pd.DataFrame(rows)
        if name == "rsna":
            manifest["split"] = split_by_group(manifest["patient_id"], RSNA_FRACTIONS, data_cfg.split_seed)
        elif name == "siim":
            manifest["split"] = split_by_group(manifest["patient_id"], SIIM_FRACTIONS, data_cfg.split_seed)
        manifest = _order_columns(manifest)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        if boxes is not None:
            kept = manifest.set_index("patient_id")["image"]
            boxes = boxes[boxes["patientId"].isin(kept.index)]
            out_boxes = pd.DataFrame({"image": boxes["patientId"].map(kept).to_numpy(),
                                      **{c: boxes[c].to_numpy() for c in ("x", "y", "width", "height")}})
            out_boxes.to_csv(tmp / "boxes.csv", index=False)
            notes["boxes_written"] = int(len(out_boxes))
        report = {
            "dataset": name, "image_size": data_cfg.image_size, "split_seed": data_cfg.split_seed,
            "on_bad_input": data_cfg.on_bad_input, "counts": _counts(manifest, name), "protocol": notes,
            "skipped": issues.report(),
        }
        (tmp / "prepare_report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    skipped = report["skipped"]
    log.info("%s: prepared %d images from %s into %s in %.1f s; %d input(s) skipped%s", name, len(manifest), raw_dir,
             out_dir, time.perf_counter() - start, skipped["count"],
             f" {skipped['by_reason']} (listed in prepare_report.json)" if skipped["count"] else "")
    return report


def _order_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    first = ["image", "split", "patient_id", "study_id", "orig_width", "orig_height"]
    rest = [c for c in manifest.columns if c not in first]
    return manifest[first + rest]

