"""Readers of the raw data set formats (SPEC §6): images, DICOMs, label tables and SIIM RLE masks.

Every reader raises :class:`BadInputError` naming the offending file (and row, for tables) so that
``prepare`` can either stop with a precise message or skip and count the input
(``data.on_bad_input``).  Nothing here knows where data sets live on disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# The 14 findings of the CheXpert labeller (MIMIC-CXR ``mimic-cxr-2.0.0-chexpert.csv`` and CheXpert ``train.csv``).
CHEXPERT_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
]
# The 14 NIH ChestX-ray14 findings, spelled as in ``Data_Entry_2017_v2020.csv``.
NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
# The CheXpert 5x200 classes (GLoRIA/MGCA protocol).
CHEXPERT_5X200_CLASSES = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


class BadInputError(ValueError):
    """A raw input that cannot be used; the message names the file (and row)."""

    def __init__(self, path: str | Path, reason: str, row: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.row = row
        where = self.path if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {reason}")


# ------------------------------------------------------------------------------------------- images


def read_image(path: str | Path, shortest: int | None = None) -> Image.Image:
    """Open and fully decode an image file (PNG/JPEG/...); DICOMs go through :func:`read_dicom`.

    ``shortest``: the shortest side the caller will resize to. A JPEG at least :data:`DRAFT_FACTOR` x 2 times larger
    is then decoded at a reduced scale (libjpeg's DCT scaling, PIL ``Image.draft``: 1/2, 1/4 or 1/8) that keeps its
    shortest side at least ``DRAFT_FACTOR`` times ``shortest``, so the resize still has as many source pixels as it
    can use: a 3000x2500 MIMIC JPEG for a 224 cache decodes at 750x625, several times faster, and the cached image
    differs from the one of a full decode by about one grey level (tests/test_prepare.py). The original size stays in
    ``img.info["original_size"]``.

    Truncated or corrupt files raise :class:`BadInputError` naming the file (PIL decodes lazily, so the
    pixels are loaded here rather than at first use).
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return Image.fromarray(read_dicom(path))
    if not path.is_file():
        raise BadInputError(path, "file not found")
    try:
        with Image.open(path) as img:
            original = img.size
            if shortest and img.format == "JPEG" and min(img.size) >= 2 * DRAFT_FACTOR * shortest:
                scale = DRAFT_FACTOR * shortest / min(img.size)
                img.draft(img.mode, (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))))
            img.load()
            out = img.copy() if img.mode not in ("I;16", "I;16B", "I", "F") else _to_8bit_pil(img)
            out.info["original_size"] = original
            return out
    except BadInputError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise BadInputError(path, f"cannot decode image ({type(err).__name__}: {err})") from err


# Draft decoding keeps at least this many source pixels per cached pixel along the shortest side.
DRAFT_FACTOR = 2


def _to_8bit_pil(img: Image.Image) -> Image.Image:
    """16-bit / integer grayscale PNGs (e.g. some NIH or converted DICOMs) -> 8-bit by min-max."""
    return Image.fromarray(window_to_uint8(np.asarray(img, dtype=np.float64)))


def window_to_uint8(values: np.ndarray, center: float | None = None, width: float | None = None) -> np.ndarray:
    """Map values linearly to 0..255: the window [center - width/2, center + width/2] if given, else min..max."""
    values = np.asarray(values, dtype=np.float64)
    if center is not None and width is not None and width > 0:
        low, high = center - width / 2.0, center + width / 2.0
    else:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (values - low) / (high - low)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """First element of a DICOM multi-value (WindowCenter may hold several), as float."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom(path: str | Path, window: str = "auto") -> np.ndarray:
    """Decode a single-frame grayscale DICOM to an 8-bit display image (H, W) uint8.

    Order of operations (DICOM PS3.3 C.11): stored values (pydicom keeps only the ``BitsStored`` low bits and
    applies ``PixelRepresentation``) -> modality LUT ``value * RescaleSlope + RescaleIntercept`` -> VOI window
    to 8 bit -> ``MONOCHROME1`` inverted so that high attenuation is always bright.

    ``window``: ``auto`` uses the file's first WindowCenter/WindowWidth when present, else the image's min..max;
    ``minmax`` always uses min..max.
    """
    import pydicom

    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "file not found")
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors of truncated headers ...
        raise BadInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise BadInputError(path, "DICOM has no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as err:  # truncated pixel data, unsupported transfer syntax, ...
        raise BadInputError(path, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if stored.ndim != 2:
        if stored.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") and stored.shape[-1] == 3:
            stored = stored.astype(np.float64).mean(axis=-1)
        else:
            raise BadInputError(path, f"expected a single-frame grayscale image, got pixel array {stored.shape}")
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    values = stored.astype(np.float64) * (1.0 if slope is None else slope) + (0.0 if intercept is None else intercept)
    center = width = None
    if window == "auto":
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    elif window != "minmax":
        raise ValueError(f"window must be 'auto' or 'minmax', got {window!r}")
    out = window_to_uint8(values, center, width)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def read_dicom_header(path: str | Path):
    """The DICOM header without pixel data (fast); :class:`BadInputError` if unreadable."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors of truncated headers ...
        raise BadInputError(path, f"not a readable DICOM file ({type(err).__name__}: {err})") from err


# ---------------------------------------------------------------------------------------- SIIM RLE


def decode_rle(rle: str, height: int, width: int, *, source: str | Path = "<rle>", row: int | None = None
               ) -> np.ndarray:
    """Decode one SIIM-ACR run-length string to a bool mask (height, width).

    Format: whitespace-separated pairs ``start length``; each start is relative to the end of the previous run
    (the first to pixel 0), over the column-major (transposed) flattening of the mask. ``"-1"`` (or empty) =
    no pneumothorax. Malformed strings raise :class:`BadInputError` naming ``source`` and ``row``.
    """
    mask = np.zeros(height * width, dtype=bool)
    text = "" if rle is None or (isinstance(rle, float) and np.isnan(rle)) else str(rle).strip()
    if text in ("", "-1"):
        return mask.reshape(width, height).T
    try:
        numbers = [int(tok) for tok in text.split()]
    except ValueError:
        bad = next(tok for tok in text.split() if not re.fullmatch(r"[+-]?\d+", tok))
        raise BadInputError(source, f"malformed RLE: non-integer token {bad!r}", row) from None
    if len(numbers) % 2:
        raise BadInputError(source, f"malformed RLE: odd number of values ({len(numbers)})", row)
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if start < 0 or length <= 0:
            raise BadInputError(source, f"malformed RLE: run ({start}, {length}) has a negative start or "
                                "non-positive length", row)
        position += start
        if position + length > mask.size:
            raise BadInputError(source, f"malformed RLE: run ends at pixel {position + length}, beyond the "
                                f"{height}x{width} mask", row)
        mask[position:position + length] = True
        position += length
    return mask.reshape(width, height).T


def decode_rle_union(rles: Iterable[str], height: int, width: int, *, source: str | Path = "<rle>",
                     rows: Iterable[int] | None = None) -> np.ndarray:
    """Union of several RLE components of one image (SIIM lists one row per component)."""
    rles = list(rles)
    rows = list(rows) if rows is not None else [None] * len(rles)
    mask = np.zeros((height, width), dtype=bool)
    for rle, row in zip(rles, rows):
        mask |= decode_rle(rle, height, width, source=source, row=row)
    return mask


def _strip_columns(df: pd.DataFrame) -> pd.DataFrame:
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _require(df: pd.DataFrame, columns: Iterable[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInputError(path, f"missing column(s) {missing}; found {list(df.columns)}")


def read_table(path: str | Path, columns: Iterable[str] = (), **kwargs) -> pd.DataFrame:
    """Read a CSV (plain, .gz or .zip), strip header whitespace, require ``columns``."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "file not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        raise BadInputError(path, f"cannot parse table ({type(err).__name__}: {err})") from err
    df = _strip_columns(df)
    _require(df, columns, path)
    return df


def read_siim_rle(path: str | Path) -> pd.DataFrame:
    """SIIM ``train-rle.csv`` / ``stage_2_train.csv`` -> DataFrame[ImageId, EncodedPixels, row].

    Header whitespace (the Kaggle file has `` EncodedPixels``) is tolerated; ``row`` is the 1-based data row
    number in the file (for error messages).
    """
    df = read_table(path, ["ImageId", "EncodedPixels"], dtype=str, keep_default_na=False)
    df = df[["ImageId", "EncodedPixels"]].copy()
    df["ImageId"] = df["ImageId"].str.strip()
    df["EncodedPixels"] = df["EncodedPixels"].str.strip()
    df["row"] = np.arange(1, len(df) + 1)
    empty_id = df["ImageId"] == ""
    if empty_id.any():
        raise BadInputError(path, "empty ImageId", int(df.loc[empty_id, "row"].iloc[0]))
    return df


def siim_image_table(rle: pd.DataFrame) -> pd.DataFrame:
    """One row per SIIM image: ImageId, positive, label (Normal/Pneumothorax), rles (the non-empty components),
    rle_rows (their 1-based file rows), rows (every file row of the image)."""
    positive = ~rle["EncodedPixels"].isin(["", "-1"])
    grouped = rle.assign(positive=positive).groupby("ImageId", sort=True)
    components = rle[positive].groupby("ImageId", sort=True)
    ids = list(grouped.groups)
    rles = components["EncodedPixels"].apply(list).reindex(ids)
    rle_rows = components["row"].apply(list).reindex(ids)
    out = pd.DataFrame({
        "ImageId": ids,
        "positive": grouped["positive"].any().to_numpy(),
        "rles": [v if isinstance(v, list) else [] for v in rles],
        "rle_rows": [v if isinstance(v, list) else [] for v in rle_rows],
        "rows": grouped["row"].apply(list).to_numpy(),
    })
    out["label"] = np.where(out["positive"], "Pneumothorax", "Normal")
    return out


# ------------------------------------------------------------------------------------------- tables


def read_rsna_labels(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RSNA ``stage_2_train_labels.csv`` -> (patients[patientId, Target], boxes[patientId, x, y, width, height]).

    One row per box (positives) or one row with empty box (negatives). A patient whose rows disagree on
    ``Target``, or a positive row without a complete box, raises :class:`BadInputError` naming the row.
    """
    df = read_table(path, ["patientId", "x", "y", "width", "height", "Target"])
    df["row"] = np.arange(1, len(df) + 1)
    df["patientId"] = df["patientId"].astype(str).str.strip()
    target = pd.to_numeric(df["Target"], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        raise BadInputError(path, f"Target must be 0 or 1, got {df.loc[bad, 'Target'].iloc[0]!r}",
                            int(df.loc[bad, "row"].iloc[0]))
    df["Target"] = target.astype(int)
    per_patient = df.groupby("patientId", sort=False)["Target"].agg(["min", "max"])
    conflict = per_patient.index[per_patient["min"] != per_patient["max"]]
    if len(conflict):
        row = int(df.loc[df["patientId"] == conflict[0], "row"].iloc[0])
        raise BadInputError(path, f"patient {conflict[0]} has rows with different Target", row)
    box_cols = ["x", "y", "width", "height"]
    positives = df[df["Target"] == 1]
    incomplete = positives[box_cols].isna().any(axis=1)
    if incomplete.any():
        raise BadInputError(path, "positive row without a complete box", int(positives.loc[incomplete, "row"].iloc[0]))
    patients = per_patient["max"].rename("Target").reset_index()
    boxes = positives[["patientId", *box_cols]].astype({c: float for c in box_cols}).reset_index(drop=True)
    return patients, boxes


def _labels_01(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """CheXpert-labeller values -> 0/1 ints: 1 -> 1; blank, 0 and uncertain -1 -> 0."""
    out = pd.DataFrame(index=df.index)
    for col in columns:
        out[col] = (pd.to_numeric(df[col], errors="coerce") == 1).astype(int)
    return out


def read_chexpert_table(path: str | Path) -> pd.DataFrame:
    """CheXpert ``train.csv`` with patient_id / study_id parsed from ``Path`` (``.../patientXXXXX/studyN/...``)."""
    df = read_table(path, ["Path", "Frontal/Lateral", *CHEXPERT_FINDINGS])
    df["row"] = np.arange(1, len(df) + 1)
    parts = df["Path"].astype(str).str.extract(r"(patient\d+)/(study\d+)/")
    missing = parts[0].isna()
    if missing.any():
        raise BadInputError(path, f"Path without patientXXXXX/studyN: {df.loc[missing, 'Path'].iloc[0]!r}",
                            int(df.loc[missing, "row"].iloc[0]))
    df["patient_id"] = parts[0]
    df["study_id"] = parts[0] + "/" + parts[1]
    return df


def select_chexpert_5x200(df: pd.DataFrame, seed: int, n_per_class: int = 200,
                          classes: list[str] = CHEXPERT_5X200_CLASSES) -> tuple[pd.DataFrame, dict]:
    """The CheXpert 5x200 selection (GLoRIA/MGCA): frontal views; blanks -> 0; class c = the images with c = 1
    and every other finding except No Finding = 0 (uncertain -1 excludes the image); ``n_per_class`` sampled
    per class with ``random_state=seed`` (all of them when fewer exist).

    Returns (rows of ``df`` with a ``label`` column, in class order; {class: {"available", "selected"}}).
    """
    frontal = df[df["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"]
    others = [c for c in CHEXPERT_FINDINGS if c != "No Finding"]
    values = frontal[others].apply(pd.to_numeric, errors="coerce").fillna(0)
    picked, counts = [], {}
    for cls in classes:
        rest = [c for c in others if c != cls]
        eligible = frontal[(values[cls] == 1) & (values[rest] == 0).all(axis=1)]
        take = eligible if len(eligible) <= n_per_class else eligible.sample(n=n_per_class, random_state=seed)
        picked.append(take.assign(label=cls))
        counts[cls] = {"available": int(len(eligible)), "selected": int(len(take))}
    return pd.concat(picked), counts


def read_nih_table(path: str | Path) -> pd.DataFrame:
    """NIH ``Data_Entry_2017_v2020.csv`` with one 0/1 column per NIH finding ("No Finding" = all 0)."""
    df = read_table(path, ["Image Index", "Finding Labels", "Patient ID"])
    df["row"] = np.arange(1, len(df) + 1)
    known = set(NIH_FINDINGS) | {"No Finding"}
    found = df["Finding Labels"].fillna("").astype(str).str.split("|")
    for i, labels in enumerate(found):
        unknown = [lab.strip() for lab in labels if lab.strip() not in known]
        if unknown:
            raise BadInputError(path, f"unknown finding {unknown[0]!r} in Finding Labels", int(df["row"].iloc[i]))
    sets = found.apply(lambda labels: {lab.strip() for lab in labels})
    for name in NIH_FINDINGS:
        df[name] = sets.apply(lambda s, n=name: int(n in s))
    return df


def read_list(path: str | Path) -> list[str]:
    """A file list such as NIH ``test_list.txt`` (one name per line, blanks ignored)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_mimic_tables(metadata: Path, split: Path, chexpert: Path) -> pd.DataFrame:
    """Join the MIMIC-CXR-JPG tables: one row per image with ViewPosition, split and the 14 labels.

    Labels are joined on (subject_id, study_id) by key; studies absent from the CheXpert table get all 0
    (column ``has_labels`` = False). Labels: 1 -> 1; blank, 0, -1 -> 0.
    """
    meta = read_table(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype={"dicom_id": str})
    spl = read_table(split, ["dicom_id", "split"], dtype={"dicom_id": str})
    chx = read_table(chexpert, ["subject_id", "study_id", *CHEXPERT_FINDINGS])
    dup = chx.duplicated(["subject_id", "study_id"])
    if dup.any():
        raise BadInputError(chexpert, f"duplicate study_id {chx.loc[dup, 'study_id'].iloc[0]}",
                            int(np.flatnonzero(dup.to_numpy())[0]) + 1)
    meta["row"] = np.arange(1, len(meta) + 1)
    df = meta.merge(spl[["dicom_id", "split"]], on="dicom_id", how="left", validate="one_to_one")
    labels = pd.concat([chx[["subject_id", "study_id"]], _labels_01(chx, CHEXPERT_FINDINGS)], axis=1)
    labels["has_labels"] = True
    df = df.merge(labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")
    df["has_labels"] = df["has_labels"].fillna(False).astype(bool)
    for col in CHEXPERT_FINDINGS:
        df[col] = df[col].fillna(0).astype(int)
    return df


_SECTION = re.compile(r"^[ \t]*([A-Z][A-Z &/()-]*?)[ \t]*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Split a free-text radiology report on its upper-case ``HEADER:`` lines -> {header: body}."""
    sections: dict[str, str] = {}
    matches = list(_SECTION.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[match.end():end].split())
        name = match.group(1).strip()
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def report_text(text: str) -> str:
    """Findings + impression of a report (SPEC §5); the whole report (whitespace-normalised) if it has neither."""
    sections = report_sections(text)
    parts = [sections[k] for k in ("FINDINGS", "FINDINGS AND IMPRESSION", "IMPRESSION") if sections.get(k)]
    return " ".join(parts) if parts else " ".join(text.split())
