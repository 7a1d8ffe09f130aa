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

Each data set has one collector (:mod:`ace_lora.data.collectors`: tables -> work items, protocol notes, boxes);
the split follows the registry's ``split`` rule (:mod:`ace_lora.registry`): the collector's for ``official`` and
``list_head``, one value for ``single``, and for ``patient_hash`` assigned after decoding (patient IDs of SIIM come
from the DICOM headers). Label tables are found by the registry's names near the top of the raw folder and images
by name anywhere under it, so the official archives' nesting (``CheXpert-v1.0-small/``, ``images_001/images/``,
``stage_2_train_images/`` ...) does not matter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.config import DataConfig
from ace_lora.data.collectors import COLLECTORS, Collected, Issues, Item, PrepareError
from ace_lora.data.readers import BadInputError, decode_rle_union, read_dicom_header, read_image, rle_extent
from ace_lora.io import atomic_dir, within
from ace_lora.progress import progress
from ace_lora.registry import DATASETS, Dataset, Split

__all__ = ["PrepareError", "default_workers", "group_uniform", "prepare_dataset", "split_by_group"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- splits


def group_uniform(group: str, seed: int) -> float:
    """A number in [0, 1) that depends only on (``seed``, ``group``): the first 8 bytes of sha256("seed:group")."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


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
    assigned = {
        g: names[min(int(np.searchsorted(bounds, group_uniform(g, seed), side="right")), len(names) - 1)]
        for g in ids.unique()
    }
    return ids.map(assigned)


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


def _process(item: Item, out: Path, size: int) -> dict:
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


def _check_mask_grid(item: Item, width: int, height: int) -> None:
    """An RLE that runs past the image's pixel count means the image's size disagrees with the mask grid of the
    table: the DICOM is blamed (its RLE rows are named)."""
    try:
        extent = max(rle_extent(r) for r in item.rles)
    except ValueError:  # malformed RLE: decode_rle names the row
        return
    if extent > width * height:
        raise BadInputError(
            item.source,
            f"image is {width}x{height} ({width * height} pixels) but its masks in "
            f"{Path(item.rle_source).name} rows {item.rle_rows} run to pixel {extent}: the DICOM's "
            "size disagrees with the RLE grid; replace the file (or drop its rows)",
            kind="mask_mismatch",
        )


def _process_or_bad(item: Item, out: Path, size: int) -> dict | tuple:
    """:func:`_process`, with a bad input returned as ``(path, reason, row, kind)`` (it crosses process
    boundaries)."""
    try:
        return _process(item, out, size)
    except BadInputError as err:
        return (err.path, err.reason, err.row, err.kind)


def _map(items: list[Item], out: Path, size: int, workers: int) -> Iterator[tuple[int, dict | tuple]]:
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


def _run(items: list[Item], out: Path, size: int, issues: Issues, workers: int, desc: str) -> list[dict]:
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


def _counts(manifest: pd.DataFrame, dataset: Dataset) -> dict:
    counts: dict = {
        "images": int(len(manifest)),
        "splits": {k: int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
    }
    if "label" in manifest:
        counts["classes"] = {
            s: {k: int(v) for k, v in g["label"].value_counts().sort_index().items()}
            for s, g in manifest.groupby("split")
        }
    if dataset.findings:
        counts["positives"] = {s: {c: int(g[c].sum()) for c in dataset.findings} for s, g in manifest.groupby("split")}
    if "mask" in manifest:
        counts["masks"] = int((manifest["mask"].fillna("") != "").sum())
    if "patient_id" in manifest:
        counts["patients"] = int(manifest["patient_id"].nunique())
    return counts


def _assign_split(manifest: pd.DataFrame, split: Split, seed: int) -> pd.Series:
    """The ``split`` column by the registry's rule: ``single``: one value; ``patient_hash``: :func:`split_by_group`
    of the patient ids over ``fractions``; ``official`` and ``list_head``: the collector's (from the data set's
    files)."""
    if split.rule == "single":
        return pd.Series(split.value, index=manifest.index)
    if split.rule == "patient_hash":
        return split_by_group(manifest["patient_id"], dict(split.fractions), seed)
    return manifest["split"]


def _write_boxes(boxes: pd.DataFrame, manifest: pd.DataFrame, path: Path) -> int:
    """``boxes.csv`` (``image,x,y,width,height``) of the prepared images; returns the number of boxes written."""
    kept = manifest.set_index("patient_id")["image"]
    boxes = boxes[boxes["patientId"].isin(kept.index)]
    out = pd.DataFrame(
        {
            "image": boxes["patientId"].map(kept).to_numpy(),
            **{c: boxes[c].to_numpy() for c in ("x", "y", "width", "height")},
        }
    )
    out.to_csv(path, index=False)
    return int(len(out))


def prepare_dataset(name: str, raw_root: Path, out_dir: Path, data_cfg: DataConfig, workers: int | None = None) -> dict:
    """Prepare data set ``name`` from ``raw_root/<name>/`` into ``out_dir``; returns the report (also written).

    ``workers``: image-decoding processes (default :func:`default_workers`); any count writes the same bytes.
    Bad inputs raise :class:`BadInputError` naming the file and row (``data_cfg.on_bad_input == "error"``) or are
    skipped and listed in the report (``"skip"``). ``out_dir`` is replaced only when everything succeeded.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[name]
    raw_dir = Path(raw_root) / name
    if not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: raw data set folder not found; run `python -m ace_lora fetch {name}` first")
    start = time.perf_counter()
    issues = Issues(data_cfg.on_bad_input, raw_dir)
    collected: Collected = COLLECTORS[name](dataset, raw_dir, data_cfg, issues)
    if not collected.items:
        raise PrepareError(
            f"{raw_dir}: no usable images ({len(issues.skipped)} skipped: {issues.report()['by_reason']})"
        )
    notes = dict(collected.protocol)
    workers = workers if workers is not None else default_workers()
    with atomic_dir(out_dir) as tmp:
        rows = _run(collected.items, tmp, data_cfg.image_size, issues, workers, f"prepare {name}")
        if not rows:
            raise PrepareError(
                f"{raw_dir}: every image was skipped ({len(issues.skipped)}: {issues.report()['by_reason']})"
            )
        manifest = pd.DataFrame(rows)
        manifest["split"] = _assign_split(manifest, dataset.split, data_cfg.split_seed)
        manifest = _order_columns(manifest)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        if collected.boxes is not None:
            notes["boxes_written"] = _write_boxes(collected.boxes, manifest, tmp / "boxes.csv")
        report = {
            "dataset": name,
            "image_size": data_cfg.image_size,
            "split_seed": data_cfg.split_seed,
            "on_bad_input": data_cfg.on_bad_input,
            "counts": _counts(manifest, dataset),
            "protocol": notes,
            "skipped": issues.report(),
        }
        (tmp / "prepare_report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    skipped = report["skipped"]
    log.info(
        "%s: prepared %d images from %s into %s in %.1f s; %d input(s) skipped%s",
        name,
        len(manifest),
        raw_dir,
        out_dir,
        time.perf_counter() - start,
        skipped["count"],
        f" {skipped['by_reason']} (listed in prepare_report.json)" if skipped["count"] else "",
    )
    return report


def _order_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    first = ["image", "split", "patient_id", "study_id", "orig_width", "orig_height"]
    rest = [c for c in manifest.columns if c not in first]
    return manifest[first + rest]
