"""The demo's data set writers: one synthetic data set in its distributed raw layout (docs/method.md#data-sets).

``write_fixture(dataset, raw_dir, cfg)`` writes one data set of the registry into ``raw_dir`` exactly as the real
archive unpacks (file names, table columns, value spellings, gzip tables, DICOM attributes), at the sizes of
:class:`~ace_lora.config.DemoConfig`. Output is a pure function of ``cfg`` (byte-identical for a seed): each data
set draws from its own seeded generator, in a fixed order. Images come from :mod:`ace_lora.demo.painters`, MIMIC
reports from :mod:`ace_lora.demo.reports`, RSNA/SIIM files from :mod:`ace_lora.demo.dicom`; the CSV, gzip, image
and SIIM run-length helpers are here.
"""

from __future__ import annotations

import gzip
import io
import uuid
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ace_lora.config import DemoConfig
from ace_lora.demo.dicom import random_uid, write_dicom
from ace_lora.demo.painters import NIH_PATTERN, render_chest, render_histo, render_lateral
from ace_lora.demo.reports import NON_PATHOLOGY, sample_findings, write_report_text
from ace_lora.registry import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_FINDINGS,
    CHEXPERT_TABLE_ORDER,
    DATASET_NAMES,
    DATASETS,
    LC25000_CLASSES,
    NIH_FINDINGS,
)

#: Bumped whenever the generated files change, so `fetch` regenerates an existing demo folder.
FIXTURE_VERSION = 1

# Findings that may accompany a "Normal" RSNA/SIIM image without being the target.
_DISTRACTORS = ("Cardiomegaly", "Support Devices", "Pleural Other", "Fracture", "Enlarged Cardiomediastinum")
#: Share of the RSNA / SIIM images that ``prepare`` holds out for testing (the registry's split fractions): the
#: writers write enough images per class that the test split holds about ``n_per_class`` of each.
TEST_FRACTION = {name: DATASETS[name].split.fractions["test"] for name in ("rsna", "siim")}
# LC25000 class folder -> the prefix of its file names (lungaca1.jpeg, ...).
_LC_FILE_PREFIX = {
    "lung_aca": "lungaca",
    "lung_n": "lungn",
    "lung_scc": "lungscc",
    "colon_aca": "colonca",
    "colon_n": "colonn",
}


def _rng(cfg: DemoConfig, dataset: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, zlib.crc32(dataset.encode())])


# ----------------------------------------------------------------------------------------------- file helpers


def _csv_text(header: list[str] | str, rows: list[list]) -> str:
    head = header if isinstance(header, str) else ",".join(_csv_cell(h) for h in header)
    return head + "\n" + "".join(",".join(_csv_cell(v) for v in row) + "\n" for row in rows)


def _csv_cell(value) -> str:
    text = "" if value is None else str(value)
    return f'"{text}"' if ("," in text or '"' in text) else text


def _write_text(path: Path, text: str, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
            f.write(text.encode())
        path.write_bytes(buf.getvalue())
    else:
        path.write_text(text)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _save_image(path: Path, img: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(_to_uint8(img) if img.dtype != np.uint8 else img)
    if mode != pil.mode:
        pil = pil.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, quality=95)
    else:
        pil.save(path)


def _label_value(v: float | None) -> str:
    return "" if v is None else f"{float(v):.1f}"


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) in pixels of a boolean mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def encode_rle(mask: np.ndarray) -> str:
    """SIIM run-length encoding of a boolean (H, W) mask: column-major pixels, each start relative to the end
    of the previous run (the first to pixel 0); ``"-1"`` for an empty mask."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return "-1"
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(f"{g} {n}" for g, n in zip(gaps, ends - starts))


def _hex_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5))


# ------------------------------------------------------------------------------------------------------ MIMIC


def _write_mimic(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    n_eval = max(2, cfg.n_train // 40)
    splits = ["train"] * cfg.n_train + ["validate"] * n_eval + ["test"] * n_eval
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), size=len(splits), replace=False)
    studies = rng.choice(np.arange(50_000_000, 60_000_000), size=len(splits), replace=False)
    rows: dict[str, list] = {"metadata": [], "split": [], "chexpert": []}
    i, n_lateral = 0, 0
    while i < len(splits):  # subjects of 1-3 consecutive studies within one split
        k = int(min(rng.integers(1, 4), len(splits) - i))
        while splits[i + k - 1] != splits[i]:
            k -= 1
        for j in range(i, i + k):
            n_lateral += _write_mimic_study(
                raw, cfg.image_size, int(subjects[i]), int(studies[j]), splits[j], rng, rows
            )
        i += k
    order = rng.permutation(len(rows["chexpert"]))  # a different row order than the metadata: join by key
    chexpert_rows = [rows["chexpert"][o] for o in order]
    meta_cols = [
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]
    _write_text(raw / "mimic-cxr-2.0.0-metadata.csv.gz", _csv_text(meta_cols, rows["metadata"]), gz=True)
    _write_text(
        raw / "mimic-cxr-2.0.0-split.csv.gz",
        _csv_text(["dicom_id", "study_id", "subject_id", "split"], rows["split"]),
        gz=True,
    )
    _write_text(
        raw / "mimic-cxr-2.0.0-chexpert.csv.gz",
        _csv_text(["subject_id", "study_id", *CHEXPERT_FINDINGS], chexpert_rows),
        gz=True,
    )
    return {
        "images": len(rows["metadata"]),
        "studies": len(splits),
        "lateral_images": n_lateral,
        "train_studies": cfg.n_train,
        "validate_studies": n_eval,
        "test_studies": n_eval,
    }


def _write_mimic_study(
    raw: Path, size: int, subject: int, study: int, split: str, rng: np.random.Generator, rows: dict[str, list]
) -> int:
    """One MIMIC study: its report, its frontal image (and sometimes a lateral one), and its rows of the three
    tables (appended to ``rows``). Returns the number of lateral images written (0 or 1)."""
    folder = raw / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
    findings = sample_findings(rng)
    view = "PA" if rng.random() < 0.6 else "AP"
    text, labels = write_report_text(findings, rng, view)
    _write_text(folder / f"s{study}.txt", text)
    strengths = {n: (0.6 if v < 0 else 1.0) for n, v in findings.items()}
    img, _ = render_chest(size, strengths, rng)
    views = [(view, img)]
    if rng.random() < 0.3:
        views.append(("LATERAL" if rng.random() < 0.8 else "LL", render_lateral(size, rng)))
    date = f"21{rng.integers(10, 90)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    for vp, pixels in views:
        dicom_id = _hex_id(rng)
        _save_image(folder / f"s{study}" / f"{dicom_id}.jpg", pixels)
        lateral = vp in ("LATERAL", "LL")
        rows["metadata"].append(
            [
                dicom_id,
                subject,
                study,
                "CHEST (PA AND LAT)",
                vp,
                size,
                size,
                date,
                f"{rng.integers(0, 235959):06d}.{rng.integers(0, 999):03d}",
                "CHEST (PA AND LAT)",
                "lateral" if lateral else ("postero-anterior" if vp == "PA" else "antero-posterior"),
                "Erect",
            ]
        )
        rows["split"].append([dicom_id, study, subject, split])
    rows["chexpert"].append([subject, study] + [_label_value(labels.get(c)) for c in CHEXPERT_FINDINGS])
    return len(views) - 1


# --------------------------------------------------------------------------------------------------- CheXpert


def _write_chexpert(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = cfg.image_size, cfg.n_per_class
    others = [f for f in CHEXPERT_TABLE_ORDER if f not in ("No Finding",) and f not in CHEXPERT_5X200_CLASSES]
    cases: list[tuple[str, dict[str, int]]] = []
    for cls in CHEXPERT_5X200_CLASSES:
        cases += [("pure", {cls: 1})] * n
    for _ in range(max(1, n // 2)):
        a, b = rng.choice(len(CHEXPERT_5X200_CLASSES), 2, replace=False)
        cases.append(("multi", {CHEXPERT_5X200_CLASSES[a]: 1, CHEXPERT_5X200_CLASSES[b]: 1}))
        c = CHEXPERT_5X200_CLASSES[rng.integers(len(CHEXPERT_5X200_CLASSES))]
        cases.append(("uncertain", {c: 1, others[rng.integers(len(others))]: -1}))
        cases.append(("normal", {}))
        cases.append(("other", {others[rng.integers(len(others))]: 1}))
    order = rng.permutation(len(cases))
    rows, n_lateral = [], 0
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_TABLE_ORDER]
    for pid, idx in enumerate(order, start=1):
        kind, findings = cases[idx]
        values: dict[str, float | None] = {}
        for f in CHEXPERT_TABLE_ORDER[1:]:
            values[f] = float(findings[f]) if f in findings else (0.0 if rng.random() < 0.15 else None)
        if not any(v == 1 for f, v in values.items() if f not in NON_PATHOLOGY):
            values["No Finding"] = 1.0
        study = f"CheXpert-v1.0-small/train/patient{pid:05d}/study{int(rng.integers(1, 4))}"
        sex, age = ("Male", "Female")[int(rng.integers(2))], int(rng.integers(18, 91))
        strengths = {f: (0.6 if v < 0 else 1.0) for f, v in findings.items()}
        img, _ = render_chest(S, strengths, rng)
        ap = "AP" if rng.random() < 0.7 else "PA"
        views = [(f"{study}/view1_frontal.jpg", "Frontal", ap, img)]
        if rng.random() < 0.2:
            views.append((f"{study}/view2_lateral.jpg", "Lateral", "", render_lateral(S, rng)))
            n_lateral += 1
        for path, fl, appa, pixels in views:
            _save_image(raw / path, pixels)
            rows.append([path, sex, age, fl, appa] + [_label_value(values.get(f)) for f in CHEXPERT_TABLE_ORDER])
    _write_text(raw / "CheXpert-v1.0-small" / "train.csv", _csv_text(header, rows))
    return {"images": len(rows), "frontal_single_label_per_class": n, "lateral_images": n_lateral}


# -------------------------------------------------------------------------------------------------------- NIH


def _write_nih14(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S = cfg.image_size
    n_images = len(NIH_FINDINGS) * cfg.n_per_class
    names, patients = [], []
    pid = 0
    while len(names) < n_images:
        pid += 1
        for fu in range(int(rng.integers(1, 4))):
            names.append(f"{pid:08d}_{fu:03d}.png")
            patients.append(pid)
    names, patients = names[:n_images], patients[:n_images]
    unique = sorted(set(patients))
    test_patients = set(rng.choice(unique, size=max(1, int(round(0.7 * len(unique)))), replace=False).tolist())
    test = [nm for nm, p in zip(names, patients) if p in test_patients]
    trainval = [nm for nm, p in zip(names, patients) if p not in test_patients]
    labels: dict[str, list[str]] = {}
    for group in (test, trainval):  # round-robin findings so every contiguous chunk is balanced
        for k, nm in enumerate(group):
            if rng.random() < 0.3:
                labels[nm] = []
            else:
                first = NIH_FINDINGS[k % len(NIH_FINDINGS)]
                extra = [NIH_FINDINGS[rng.integers(len(NIH_FINDINGS))]] if rng.random() < 0.3 else []
                labels[nm] = sorted({first, *extra}, key=NIH_FINDINGS.index)
    rows = []
    for k, (nm, p) in enumerate(zip(names, patients)):
        found = labels[nm]
        img, _ = render_chest(S, {NIH_PATTERN[f]: 1.0 for f in found}, rng)
        folder = "images_001" if k < len(names) // 2 else "images_002"
        pixels = _to_uint8(img)
        if k % 50 == 7:  # a few NIH PNGs are RGBA in the real archive
            pixels = np.dstack([pixels] * 3 + [np.full_like(pixels, 255)])
        _save_image(raw / folder / "images" / nm, pixels, mode="RGBA" if pixels.ndim == 3 else "L")
        rows.append(
            [
                nm,
                "|".join(found) or "No Finding",
                int(nm[9:12]),
                p,
                int(rng.integers(18, 90)),
                "M" if rng.random() < 0.55 else "F",
                "PA" if rng.random() < 0.6 else "AP",
                S,
                S,
                0.143,
                0.143,
            ]
        )
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    _write_text(raw / "Data_Entry_2017_v2020.csv", _csv_text(header, rows))
    _write_text(raw / "test_list.txt", "".join(f"{nm}\n" for nm in test))
    _write_text(raw / "train_val_list.txt", "".join(f"{nm}\n" for nm in trainval))
    return {
        "images": len(rows),
        "test_list": len(test),
        "train_val_list": len(trainval),
        "per_finding": {f: sum(f in v for v in labels.values()) for f in NIH_FINDINGS},
    }


# ------------------------------------------------------------------------------------------------------- RSNA


def _distractor(rng: np.random.Generator, p: float = 0.25) -> dict[str, float]:
    return {_DISTRACTORS[rng.integers(len(_DISTRACTORS))]: 1.0} if rng.random() < p else {}


def images_per_class(dataset: str, cfg: DemoConfig) -> int:
    """Images written per class of a binary chest set (RSNA, SIIM): enough for ``n_per_class`` test images."""
    return int(np.ceil(cfg.n_per_class / TEST_FRACTION[dataset] - 1e-9))


def _write_rsna(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = 2 * cfg.image_size, images_per_class("rsna", cfg)
    targets = rng.permutation([0] * n + [1] * n)
    records = []
    n_boxes = 0
    for k, target in enumerate(targets):
        pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        findings = {"Pneumonia": 1.0} if target else _distractor(rng)
        img, masks = render_chest(S, findings, rng)
        write_dicom(
            raw / "stage_2_train_images" / f"{pid}.dcm",
            img,
            k,
            patient_id=pid,
            sop_uid=random_uid(rng, "1.2.276.0.7230010.3.1.4.8323329"),
            study_uid=random_uid(rng, "1.2.276.0.7230010.3.1.2.8323329"),
            series_uid=random_uid(rng, "1.2.276.0.7230010.3.1.3.8323329"),
            view="PA" if k % 2 else "AP",
        )
        if target:
            for m in masks["Pneumonia"]:
                x, y, w, h = _bbox(m)
                records.append([pid, f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}", 1])
                n_boxes += 1
        else:
            records.append([pid, "", "", "", "", 0])
    records.sort(key=lambda r: r[0])
    _write_text(
        raw / "stage_2_train_labels.csv", _csv_text(["patientId", "x", "y", "width", "height", "Target"], records)
    )
    return {"images": len(targets), "positive": n, "boxes": n_boxes, "rows": len(records), "dicom_size": S}


# ------------------------------------------------------------------------------------------------------- SIIM


def _write_siim(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    S, n = 2 * cfg.image_size, images_per_class("siim", cfg)
    targets = rng.permutation([0] * n + [1] * n)
    rows, n_components = [], 0
    for k, target in enumerate(targets):
        image_id = random_uid(rng, "1.2.276.0.7230010.3.1.4.8323329")
        study = random_uid(rng, "1.2.276.0.7230010.3.1.2.8323329")
        series = random_uid(rng, "1.2.276.0.7230010.3.1.3.8323329")
        findings = {"Pneumothorax": 1.0} if target else _distractor(rng)
        img, masks = render_chest(S, findings, rng)
        write_dicom(
            raw / "dicom-images-train" / study / series / f"{image_id}.dcm",
            img,
            k + 3,
            patient_id=image_id.split(".")[-3],
            sop_uid=image_id,
            study_uid=study,
            series_uid=series,
        )
        if target:
            for m in masks["Pneumothorax"]:
                rows.append(f"{image_id}, {encode_rle(m)}\n")
                n_components += 1
        else:
            rows.append(f"{image_id}, -1\n")
    _write_text(raw / "train-rle.csv", "ImageId, EncodedPixels\n" + "".join(rows))
    return {"images": len(targets), "positive": n, "components": n_components, "rows": len(rows), "dicom_size": S}


# --------------------------------------------------------------------------------------------- histopathology


def _write_mhist(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    n = cfg.n_per_class
    cases = [(lab, part) for part in ("train", "test") for lab in ("HP", "SSA") for _ in range(n)]
    cases = [cases[i] for i in rng.permutation(len(cases))]
    codes = sorted({"".join(chr(97 + int(c)) for c in rng.integers(0, 26, 3)) for _ in range(10 * len(cases))})
    codes = [codes[i] for i in sorted(rng.choice(len(codes), size=len(cases), replace=False))]
    rows = []
    for code, (lab, part) in zip(codes, cases):
        name = f"MHIST_{code}.png"
        _save_image(raw / "images" / name, render_histo(cfg.image_size, lab, rng), mode="RGB")
        votes = int(rng.integers(0, 4)) if lab == "HP" else int(rng.integers(4, 8))
        rows.append([name, lab, votes, part])
    header = ["Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)", "Partition"]
    _write_text(raw / "annotations.csv", _csv_text(header, rows))
    return {"images": len(rows), "test": 2 * n, "train": 2 * n}


def _write_lc25000(raw: Path, cfg: DemoConfig, rng: np.random.Generator) -> dict:
    root = raw / "lung_colon_image_set"
    for cls, organ in LC25000_CLASSES.items():
        for k in range(1, cfg.n_per_class + 1):
            _save_image(
                root / f"{organ}_image_sets" / cls / f"{_LC_FILE_PREFIX[cls]}{k}.jpeg",
                render_histo(cfg.image_size, cls, rng),
                mode="RGB",
            )
    return {"images": len(LC25000_CLASSES) * cfg.n_per_class, "per_class": cfg.n_per_class}


# ----------------------------------------------------------------------------------------------------- public


_WRITERS = {
    "mimic": _write_mimic,
    "nih14": _write_nih14,
    "chexpert": _write_chexpert,
    "rsna": _write_rsna,
    "siim": _write_siim,
    "mhist": _write_mhist,
    "lc25000": _write_lc25000,
}
if set(_WRITERS) != set(DATASET_NAMES) or set(_LC_FILE_PREFIX) != set(LC25000_CLASSES):
    raise RuntimeError(
        f"ace_lora/demo/writers.py writes the data sets {sorted(_WRITERS)} (LC25000 classes "
        f"{sorted(_LC_FILE_PREFIX)}), but ace_lora/registry.py declares {sorted(DATASET_NAMES)} (LC25000 classes "
        f"{sorted(LC25000_CLASSES)}): give every registered data set (and class) a writer, or remove the stale one"
    )


def write_fixture(dataset: str, raw_dir: Path, cfg: DemoConfig) -> dict:
    """Write synthetic data set ``dataset`` into ``raw_dir`` in its distributed raw layout; returns a summary.

    Deterministic for ``cfg`` (same files, same bytes). ``raw_dir`` is the data set folder itself
    (e.g. ``data/raw/mimic``); it is created if needed and should be empty.
    """
    if dataset not in _WRITERS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASET_NAMES)}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    summary = _WRITERS[dataset](raw_dir, cfg, _rng(cfg, dataset))
    return {"dataset": dataset, "seed": cfg.seed, "image_size": cfg.image_size, **summary}
