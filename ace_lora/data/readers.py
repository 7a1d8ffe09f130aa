"""Readers of the raw data set formats (docs/method.md#data-sets): images, DICOMs, label tables and SIIM RLE masks.

Every reader raises :class:`BadInputError` naming the offending file (and row, for tables) so that
``prepare`` can either stop with a precise message or skip and count the input
(``data.on_bad_input``). Table readers take ``on_bad``: called with each row-level error (a duplicated id, a
conflict, a bad label value, an identifier that is not a plain file name); the default raises it, ``prepare``'s
skip mode records it, and the reader drops the rows concerned. Nothing here knows where data sets live on disk.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ace_lora.registry import CHEXPERT_5X200_CLASSES, CHEXPERT_FINDINGS, NIH_FINDINGS

# Radiograph modalities (DICOM Modality): computed / digital radiography. CT, MR, US ... are refused.
RADIOGRAPH_MODALITIES = {"CR", "DX", "DR", "RG"}


class BadInputError(ValueError):
    """A raw input that cannot be used; the message names the file (and row).

    ``kind``: a stable category for counting skips (``unreadable``, ``missing_file``, ``duplicate_id``,
    ``conflicting_rows``, ``bad_label``, ``bad_id``, ``empty_report``, ``not_a_radiograph``, ``mask_mismatch``,
    ``malformed_rle``, ``bad_row``).
    """

    def __init__(self, path: str | Path, reason: str, row: int | None = None, kind: str = "bad_row"):
        self.path = str(path)
        self.reason = reason
        self.row = row
        self.kind = kind
        where = self.path if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {reason}")


OnBad = Callable[[BadInputError], None]


def raise_bad(err: BadInputError) -> None:
    """The default ``on_bad``: stop at the first bad row."""
    raise err


_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f?#%]")


def safe_name(value, path: str | Path, row: int | None, what: str) -> str:
    """``value`` as a plain file-name part; :class:`BadInputError` (kind ``bad_id``) naming the table and row when
    it holds a folder separator, is ``.``/``..``, or holds a control character or ``?#%``: ids from tables become
    file names and URLs, and must not reach outside their folder."""
    text = str(value).strip()
    if text in ("", ".", "..") or _UNSAFE_NAME.search(text):
        raise BadInputError(
            path,
            f"{what} {text!r} is not a plain file name (it would reach outside its folder "
            "or break a URL); fix the table row",
            row,
            kind="bad_id",
        )
    return text


def check_names(
    df: pd.DataFrame, column: str, path: str | Path, on_bad: OnBad, what: str | None = None
) -> pd.DataFrame:
    """Drop (after ``on_bad``) the rows whose ``column`` is not a :func:`safe_name`."""
    keep = []
    for value, row in zip(df[column].astype(str), df["row"]):
        try:
            keep.append(bool(safe_name(value, path, int(row), what or column)))
        except BadInputError as err:
            on_bad(err)
            keep.append(False)
    return df[np.array(keep, dtype=bool)] if len(df) else df


def drop_duplicates(
    df: pd.DataFrame, keys: list[str], path: str | Path, on_bad: OnBad, what: str | None = None
) -> pd.DataFrame:
    """Report each key value that occurs on more than one row (kind ``duplicate_id``, naming the rows) and drop
    all its rows: which one is right cannot be known."""
    dup = df.duplicated(keys, keep=False)
    if not dup.any():
        return df
    for key, group in df[dup].groupby(keys, sort=False):
        rows = [int(r) for r in group["row"]]
        shown = key if not isinstance(key, tuple) or len(key) > 1 else key[0]
        on_bad(
            BadInputError(
                path,
                f"{what or '/'.join(keys)} {shown} appears on rows {rows}; keep one row per id",
                rows[1],
                kind="duplicate_id",
            )
        )
    return df[~dup]


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
        raise BadInputError(path, "file not found", kind="missing_file")
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
        raise BadInputError(path, f"cannot decode image ({type(err).__name__}: {err})", kind="unreadable") from err


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
        raise BadInputError(path, "file not found", kind="missing_file")
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors of truncated headers ...
        raise BadInputError(
            path, f"not a readable DICOM file ({type(err).__name__}: {err})", kind="unreadable"
        ) from err
    check_radiograph(ds, path)
    if "PixelData" not in ds:
        raise BadInputError(path, "DICOM has no pixel data", kind="unreadable")
    try:
        stored = ds.pixel_array
    except Exception as err:  # truncated pixel data, unsupported transfer syntax, ...
        raise BadInputError(
            path, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})", kind="unreadable"
        ) from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if stored.ndim != 2:
        raise BadInputError(
            path,
            f"expected a single-frame grayscale radiograph, got pixel array {stored.shape}",
            kind="not_a_radiograph",
        )
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


def check_radiograph(ds, path: str | Path) -> None:
    """Refuse DICOMs that are not a grayscale radiograph: Modality (when present) must be one of
    :data:`RADIOGRAPH_MODALITIES` and PhotometricInterpretation (when present) MONOCHROME1/2."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise BadInputError(
            path,
            f"Modality is {modality}, not a radiograph ({'/'.join(sorted(RADIOGRAPH_MODALITIES))}"
            "); remove the file or its label row",
            kind="not_a_radiograph",
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadInputError(
            path,
            f"PhotometricInterpretation is {photometric}, not a grayscale radiograph "
            "(MONOCHROME1/2); remove the file or its label row",
            kind="not_a_radiograph",
        )


def read_dicom_header(path: str | Path):
    """The DICOM header without pixel data (fast); :class:`BadInputError` if unreadable."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors of truncated headers ...
        raise BadInputError(
            path, f"not a readable DICOM file ({type(err).__name__}: {err})", kind="unreadable"
        ) from err


# ---------------------------------------------------------------------------------------- SIIM RLE


def decode_rle(
    rle: str, height: int, width: int, *, source: str | Path = "<rle>", row: int | None = None
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
        raise BadInputError(source, f"malformed RLE: non-integer token {bad!r}", row, kind="malformed_rle") from None
    if len(numbers) % 2:
        raise BadInputError(source, f"malformed RLE: odd number of values ({len(numbers)})", row, kind="malformed_rle")
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if start < 0 or length <= 0:
            raise BadInputError(
                source,
                f"malformed RLE: run ({start}, {length}) has a negative start or non-positive length",
                row,
                kind="malformed_rle",
            )
        position += start
        if position + length > mask.size:
            raise BadInputError(
                source,
                f"malformed RLE: run ends at pixel {position + length}, beyond the {height}x{width} mask",
                row,
                kind="malformed_rle",
            )
        mask[position : position + length] = True
        position += length
    return mask.reshape(width, height).T


def rle_extent(rle: str) -> int:
    """The pixel count a (well-formed) RLE string runs to: the smallest mask size that holds it."""
    text = "" if rle is None else str(rle).strip()
    return 0 if text in ("", "-1", "nan") else int(sum(int(tok) for tok in text.split()))


def decode_rle_union(
    rles: Iterable[str], height: int, width: int, *, source: str | Path = "<rle>", rows: Iterable[int] | None = None
) -> np.ndarray:
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
        raise BadInputError(path, "file not found", kind="missing_file")
    try:
        df = pd.read_csv(path, **kwargs)
    except (EOFError, zlib.error) as err:  # a truncated .gz / .zip
        raise BadInputError(
            path,
            f"the compressed table is truncated or corrupt ({type(err).__name__}: {err}); download it again",
            kind="unreadable",
        ) from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        raise BadInputError(path, f"cannot parse table ({type(err).__name__}: {err})", kind="unreadable") from err
    df = _strip_columns(df)
    _require(df, columns, path)
    return df


def read_siim_rle(path: str | Path, on_bad: OnBad = raise_bad) -> pd.DataFrame:
    """SIIM ``train-rle.csv`` / ``stage_2_train.csv`` -> DataFrame[ImageId, EncodedPixels, row].

    Header whitespace (the Kaggle file has `` EncodedPixels``) is tolerated; ``row`` is the 1-based data row
    number in the file (for error messages). Rows with an empty or unsafe ImageId go to ``on_bad``.
    """
    df = read_table(path, ["ImageId", "EncodedPixels"], dtype=str, keep_default_na=False)
    df = df[["ImageId", "EncodedPixels"]].copy()
    df["ImageId"] = df["ImageId"].str.strip()
    df["EncodedPixels"] = df["EncodedPixels"].str.strip()
    df["row"] = np.arange(1, len(df) + 1)
    return check_names(df, "ImageId", path, on_bad)


def siim_image_table(rle: pd.DataFrame, source: str | Path = "<rle>", on_bad: OnBad = raise_bad) -> pd.DataFrame:
    """One row per SIIM image: ImageId, positive, label (Normal/Pneumothorax), rles (the non-empty components),
    rle_rows (their 1-based file rows), rows (every file row of the image).

    An image with both a ``-1`` (no pneumothorax) row and RLE rows contradicts itself: ``on_bad`` (kind
    ``conflicting_rows``, naming ``source`` and the rows), and the image is dropped.
    """
    positive = ~rle["EncodedPixels"].isin(["", "-1"])
    mixed = rle.assign(positive=positive).groupby("ImageId")["positive"].agg(["any", "all"])
    mixed = mixed.index[mixed["any"] & ~mixed["all"]]
    for image_id in mixed:
        rows = [int(r) for r in rle.loc[rle["ImageId"] == image_id, "row"]]
        on_bad(
            BadInputError(
                source,
                f"image {image_id} has both a '-1' (no pneumothorax) row and RLE rows "
                f"(rows {rows}); keep either the -1 row or the RLE rows",
                rows[0],
                kind="conflicting_rows",
            )
        )
    if len(mixed):
        keep = ~rle["ImageId"].isin(mixed)
        rle, positive = rle[keep], positive[keep]
    grouped = rle.assign(positive=positive).groupby("ImageId", sort=True)
    components = rle[positive].groupby("ImageId", sort=True)
    ids = list(grouped.groups)
    rles = components["EncodedPixels"].apply(list).reindex(ids)
    rle_rows = components["row"].apply(list).reindex(ids)
    out = pd.DataFrame(
        {
            "ImageId": ids,
            "positive": grouped["positive"].any().to_numpy(dtype=bool),
            "rles": [v if isinstance(v, list) else [] for v in rles],
            "rle_rows": [v if isinstance(v, list) else [] for v in rle_rows],
            "rows": grouped["row"].apply(list).to_numpy() if ids else [],
        }
    )
    out["label"] = np.where(out["positive"], "Pneumothorax", "Normal")
    return out


# ------------------------------------------------------------------------------------------- tables


def read_rsna_labels(path: str | Path, on_bad: OnBad = raise_bad) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RSNA ``stage_2_train_labels.csv`` -> (patients[patientId, Target], boxes[patientId, x, y, width, height]).

    One row per box (positives) or one row with empty box (negatives). Through ``on_bad`` (and dropped): a Target
    other than 0/1, a patient whose rows disagree on ``Target`` or with several negative rows, a positive row
    without a complete box, an unsafe patientId.
    """
    df = read_table(path, ["patientId", "x", "y", "width", "height", "Target"])
    df["row"] = np.arange(1, len(df) + 1)
    df["patientId"] = df["patientId"].astype(str).str.strip()
    df = check_names(df, "patientId", path, on_bad)
    target = pd.to_numeric(df["Target"], errors="coerce")
    bad = ~target.isin([0, 1])
    for value, row in zip(df.loc[bad, "Target"], df.loc[bad, "row"]):
        on_bad(BadInputError(path, f"Target must be 0 or 1, got {value!r}", int(row), kind="bad_label"))
    df = df[~bad].assign(Target=target[~bad].astype(int))
    box_cols = ["x", "y", "width", "height"]
    dropped: set[str] = set()
    for pid, group in df.groupby("patientId", sort=False):
        rows = [int(r) for r in group["row"]]
        if group["Target"].nunique() > 1:
            on_bad(
                BadInputError(
                    path,
                    f"patient {pid} has rows with different Target (rows {rows})",
                    rows[0],
                    kind="conflicting_rows",
                )
            )
        elif group["Target"].iloc[0] == 0 and len(group) > 1:
            on_bad(
                BadInputError(
                    path,
                    f"patient {pid} appears on rows {rows}; a negative patient has one row",
                    rows[1],
                    kind="duplicate_id",
                )
            )
        elif group["Target"].iloc[0] == 1 and group[box_cols].isna().any(axis=None):
            row = int(group.loc[group[box_cols].isna().any(axis=1), "row"].iloc[0])
            on_bad(BadInputError(path, "positive row without a complete box", row, kind="bad_row"))
        else:
            continue
        dropped.add(pid)
    df = df[~df["patientId"].isin(dropped)]
    patients = df.groupby("patientId", sort=False)["Target"].max().reset_index()
    positives = df[df["Target"] == 1]
    boxes = positives[["patientId", *box_cols]].astype({c: float for c in box_cols}).reset_index(drop=True)
    return patients, boxes


LABEL_VALUES = (1.0, 0.0, -1.0)  # CheXpert labeller: positive, negative, uncertain (blank: not mentioned)


def check_labels(df: pd.DataFrame, columns: Iterable[str], path: str | Path, on_bad: OnBad) -> pd.DataFrame:
    """Drop (after ``on_bad``, kind ``bad_label``) the rows with a label that is not blank, 1, 0 or -1."""
    bad_rows = pd.Series(False, index=df.index)
    for col in columns:
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = (raw.notna() & (raw.astype(str).str.strip() != "") & ~values.isin(LABEL_VALUES)) & ~bad_rows
        for value, row in zip(raw[bad], df.loc[bad, "row"]):
            on_bad(
                BadInputError(path, f"label {col} must be blank, 1, 0 or -1, got {value!r}", int(row), kind="bad_label")
            )
        bad_rows |= bad
    return df[~bad_rows]


def _labels_01(df: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """CheXpert-labeller values -> 0/1 ints: 1 -> 1; blank, 0 and uncertain -1 -> 0."""
    out = pd.DataFrame(index=df.index)
    for col in columns:
        out[col] = (pd.to_numeric(df[col], errors="coerce") == 1).astype(int)
    return out


def read_chexpert_table(path: str | Path, on_bad: OnBad = raise_bad) -> pd.DataFrame:
    """CheXpert ``train.csv`` with patient_id / study_id parsed from ``Path`` (``.../patientXXXXX/studyN/...``).

    Through ``on_bad`` (and dropped): a Path that is not relative, holds ``..`` or lacks patientXXXXX/studyN; a
    Path on several rows; a label that is not blank, 1, 0 or -1.
    """
    df = read_table(path, ["Path", "Frontal/Lateral", *CHEXPERT_FINDINGS])
    df["row"] = np.arange(1, len(df) + 1)
    df["Path"] = df["Path"].astype(str).str.strip()
    parts = df["Path"].str.extract(r"(patient\d+)/(study\d+)/")
    unsafe = df["Path"].map(lambda p: p.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", p) or ":" in p)
    bad = parts[0].isna() | unsafe
    for value, row, is_unsafe in zip(df.loc[bad, "Path"], df.loc[bad, "row"], unsafe[bad]):
        why = "is not a relative path inside the data set" if is_unsafe else "has no patientXXXXX/studyN/ folders"
        on_bad(BadInputError(path, f"Path {value!r} {why}", int(row), kind="bad_id"))
    df, parts = df[~bad], parts[~bad]
    df = df.assign(patient_id=parts[0], study_id=parts[0] + "/" + parts[1])
    df = drop_duplicates(df, ["Path"], path, on_bad)
    return check_labels(df, CHEXPERT_FINDINGS, path, on_bad)


def select_chexpert_5x200(
    df: pd.DataFrame, seed: int, n_per_class: int = 200, classes: Iterable[str] = CHEXPERT_5X200_CLASSES
) -> tuple[pd.DataFrame, dict]:
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


def read_nih_table(path: str | Path, on_bad: OnBad = raise_bad) -> pd.DataFrame:
    """NIH ``Data_Entry_2017_v2020.csv`` with one 0/1 column per NIH finding ("No Finding" = all 0).

    Through ``on_bad`` (and dropped): an unknown finding, an Image Index on several rows or not a plain name.
    """
    df = read_table(path, ["Image Index", "Finding Labels", "Patient ID"])
    df["row"] = np.arange(1, len(df) + 1)
    df["Image Index"] = df["Image Index"].astype(str).str.strip()
    df = check_names(df, "Image Index", path, on_bad)
    df = drop_duplicates(df, ["Image Index"], path, on_bad)
    known = set(NIH_FINDINGS) | {"No Finding"}
    found = df["Finding Labels"].fillna("").astype(str).str.split("|")
    keep = []
    for labels, row in zip(found, df["row"]):
        unknown = [lab.strip() for lab in labels if lab.strip() not in known]
        if unknown:
            on_bad(BadInputError(path, f"unknown finding {unknown[0]!r} in Finding Labels", int(row), kind="bad_label"))
        keep.append(not unknown)
    keep = np.array(keep, dtype=bool)
    df, found = df[keep].copy(), found[keep]
    sets = found.apply(lambda labels: {lab.strip() for lab in labels})
    for name in NIH_FINDINGS:
        df[name] = sets.apply(lambda s, n=name: int(n in s)).astype(int) if len(df) else 0
    return df


def read_list(path: str | Path) -> list[str]:
    """A file list such as NIH ``test_list.txt`` (one name per line, blanks ignored)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "file not found", kind="missing_file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_mimic_tables(metadata: Path, split: Path, chexpert: Path, on_bad: OnBad = raise_bad) -> pd.DataFrame:
    """Join the MIMIC-CXR-JPG tables: one row per image with ViewPosition, split and the 14 labels.

    Labels are joined on (subject_id, study_id) by key; studies absent from the CheXpert table get all 0
    (column ``has_labels`` = False). Labels: 1 -> 1; blank, 0, -1 -> 0. Through ``on_bad`` (and dropped): ids that
    are not plain names, a dicom_id on several rows of the metadata or split table, a study on several rows of the
    CheXpert table, a label that is not blank, 1, 0 or -1.
    """
    ids = {"dicom_id": str, "subject_id": str, "study_id": str}
    meta = read_table(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype=ids)
    spl = read_table(split, ["dicom_id", "split"], dtype={"dicom_id": str})
    chx = read_table(chexpert, ["subject_id", "study_id", *CHEXPERT_FINDINGS], dtype=ids)
    for df in (meta, spl, chx):
        df["row"] = np.arange(1, len(df) + 1)
        for col in ("dicom_id", "subject_id", "study_id"):
            if col in df:
                df[col] = df[col].astype(str).str.strip()
    for col in ("dicom_id", "subject_id", "study_id"):
        meta = check_names(meta, col, metadata, on_bad)
    meta = drop_duplicates(meta, ["dicom_id"], metadata, on_bad)
    spl = drop_duplicates(spl, ["dicom_id"], split, on_bad)
    chx = drop_duplicates(chx, ["subject_id", "study_id"], chexpert, on_bad, what="study (subject_id, study_id)")
    chx = check_labels(chx, CHEXPERT_FINDINGS, chexpert, on_bad)
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
        body = " ".join(text[match.end() : end].split())
        name = match.group(1).strip()
        sections[name] = f"{sections[name]} {body}".strip() if name in sections else body
    return sections


def report_text(text: str) -> str:
    """Findings + impression of a report (docs/method.md#training); the whole report (whitespace-normalised) if it
    has neither."""
    sections = report_sections(text)
    parts = [sections[k] for k in ("FINDINGS", "FINDINGS AND IMPRESSION", "IMPRESSION") if sections.get(k)]
    return " ".join(parts) if parts else " ".join(text.split())
