"""Helpers shared by the data tests (readers, prepare, benchmarks): synthetic raw files (DICOM, SIIM RLE, images)
and a tiny raw folder of every data set in its distributed layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.config import DataConfig
from ace_lora.data import CHEXPERT_FINDINGS
from ace_lora.registry import CHEXPERT_TABLE_ORDER

# ------------------------------------------------------------------------------------------- raw files


def encode_rle(mask: np.ndarray) -> str:
    """Test-side SIIM encoder: runs over the column-major flattening, starts relative to the previous run's end."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    starts, ends = edges[0::2], edges[1::2]
    out, previous_end = [], 0
    for s, e in zip(starts, ends):
        out += [int(s - previous_end), int(e - s)]
        previous_end = e
    return " ".join(map(str, out)) if out else "-1"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    with_pixels: bool = True,
    **tags,
) -> Path:
    """A minimal valid single-frame 16-bit grayscale DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = photometric
    for key, value in tags.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


SIZE = 16  # prepared shortest side in these tests


def cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), image_size=SIZE, **kw)


def png(path: Path, shape=(24, 32), seed=0, rgb=False, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (*shape, 3) if rgb else shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------- raw layouts (docs/method.md#data-sets)


def raw_mimic(root: Path) -> Path:
    d = root / "mimic"
    meta, split, labels = [], [], []
    studies = [
        (10000001, 50000001, "train"),
        (10000001, 50000002, "train"),
        (10000002, 50000003, "validate"),
        (10000003, 50000004, "test"),
        (10000004, 50000005, "train"),
    ]
    for k, (subject, study, part) in enumerate(studies):
        folder = d / "files" / f"p{str(subject)[:2]}" / f"p{subject}"
        for view, suffix in (("PA", "a"), ("LATERAL", "b")):
            dicom_id = f"d{k}{suffix}"
            png(folder / f"s{study}" / f"{dicom_id}.jpg", (30, 26), seed=k, fmt="JPEG")
            meta.append({"dicom_id": dicom_id, "subject_id": subject, "study_id": study, "ViewPosition": view})
            split.append({"dicom_id": dicom_id, "study_id": study, "subject_id": subject, "split": part})
        (folder / f"s{study}.txt").write_text(
            f"FINAL REPORT\n INDICATION: test {k}.\n FINDINGS: finding text {k}.\n IMPRESSION: impression {k}.\n"
        )
        row = {"subject_id": subject, "study_id": study, **{c: np.nan for c in CHEXPERT_FINDINGS}}
        row["Edema"] = [1, -1, 0, np.nan, 1][k]
        row["Cardiomegaly"] = 1 if k == 2 else np.nan
        labels.append(row)
    pd.DataFrame(meta).to_csv(d / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(split).to_csv(d / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    pd.DataFrame(labels[::-1]).to_csv(d / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)  # other order: by key
    return d


def raw_nih14(root: Path) -> Path:
    d = root / "nih14"
    names = [f"{p:08d}_{i:03d}.png" for p in range(1, 8) for i in range(2)]  # 7 patients x 2 images
    findings = ["No Finding", "Cardiomegaly|Effusion", "Mass", "Hernia", "No Finding", "Pleural_Thickening"]
    table = [
        {
            "Image Index": n,
            "Finding Labels": findings[i % len(findings)],
            "Follow-up #": 0,
            "Patient ID": int(n[:8]),
            "Patient Age": 50,
            "Patient Gender": "M",
            "View Position": "PA",
        }
        for i, n in enumerate(names)
    ]
    pd.DataFrame(table).to_csv(d / "Data_Entry_2017_v2020.csv", index=False) if d.mkdir(parents=True) is None else None
    (d / "train_val_list.txt").write_text("\n".join(names[:4]) + "\n")
    (d / "test_list.txt").write_text("\n".join(names[4:]) + "\n")
    for i, n in enumerate(names):
        png(d / f"images_00{1 + i // 8}" / "images" / n, (20, 20), seed=i)
    return d


CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_TABLE_ORDER]


def raw_chexpert(root: Path) -> Path:
    d = root / "chexpert" / "CheXpert-v1.0-small"
    rows = []
    classes = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    for p in range(15):
        for view in ("frontal", "lateral"):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_{view}.jpg"
            row = dict.fromkeys(CHEXPERT_COLUMNS)
            row.update({"Path": rel, "Sex": "F", "Age": 60, "Frontal/Lateral": view.capitalize(), "AP/PA": "AP"})
            row[classes[p % 5]] = 1.0
            row["No Finding"] = 0.0
            if p == 14:
                row["Pneumonia"] = -1.0  # uncertain other finding: excluded
            rows.append(row)
            png(d.parent / rel, (30, 24), seed=p, fmt="JPEG")
    pd.DataFrame(rows, columns=CHEXPERT_COLUMNS).to_csv(d / "train.csv", index=False)
    return d.parent


def raw_rsna(root: Path, n: int = 20) -> Path:
    d = root / "rsna"
    rows = []
    for i in range(n):
        pid = f"pat-{i:03d}"
        px = (np.random.default_rng(i).random((40, 40)) * 4000).astype(np.uint16)
        write_dicom(d / "stage_2_train_images" / f"{pid}.dcm", px, "MONOCHROME2", PatientID=pid)
        if i % 3 == 0:
            rows += [[pid, 4.0, 5.0, 10.0, 12.0, 1], [pid, 20.0, 21.0, 8.0, 9.0, 1]]
        else:
            rows.append([pid, None, None, None, None, 0])
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        d / "stage_2_train_labels.csv", index=False
    )
    return d


def raw_siim(root: Path, n: int = 20) -> Path:
    d = root / "siim"
    lines = ["ImageId, EncodedPixels"]
    for i in range(n):
        image_id = f"1.2.276.0.{i}"
        px = (np.random.default_rng(i).random((32, 32)) * 4000).astype(np.uint16)
        write_dicom(
            d / "dicom-images-train" / f"1.2.{i}" / f"1.3.{i}" / f"{image_id}.dcm",
            px,
            "MONOCHROME2",
            PatientID=f"P{i // 2}",
        )  # two images per patient
        if i % 4 == 0:
            a = np.zeros((32, 32), bool)
            a[4:10, 3:8] = True
            b = np.zeros((32, 32), bool)
            b[20:26, 18:30] = True
            lines += [f"{image_id}, {encode_rle(a)}", f"{image_id}, {encode_rle(b)}"]
        else:
            lines.append(f"{image_id}, -1")
    (d / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return d


def raw_mhist(root: Path) -> Path:
    d = root / "mhist"
    rows = []
    for i in range(8):
        name = f"MHIST_{i:03d}.png"
        png(d / "images" / name, (24, 24), seed=i, rgb=True)
        rows.append([name, "SSA" if i % 2 else "HP", 3, "test" if i < 5 else "train"])
    pd.DataFrame(
        rows,
        columns=["Image Name", "Majority Vote Label", "Number of Annotators who Selected SSA (Out of 7)", "Partition"],
    ).to_csv(d / "annotations.csv", index=False)
    return d


def raw_lc25000(root: Path) -> Path:
    d = root / "lc25000" / "lung_colon_image_set"
    for organ, classes in (("lung", ["lung_aca", "lung_n", "lung_scc"]), ("colon", ["colon_aca", "colon_n"])):
        for c in classes:
            for i in range(2):
                png(
                    d / f"{organ}_image_sets" / c / f"{c.replace('_', '')}{i}.jpeg",
                    (30, 30),
                    seed=i,
                    rgb=True,
                    fmt="JPEG",
                )
    return d.parent


RAW = {
    "mimic": raw_mimic,
    "nih14": raw_nih14,
    "chexpert": raw_chexpert,
    "rsna": raw_rsna,
    "siim": raw_siim,
    "mhist": raw_mhist,
    "lc25000": raw_lc25000,
}
