"""The DICOM writer of the synthetic demo (RSNA and SIIM images).

:func:`write_dicom` stores a float picture as an uncompressed single-frame Secondary Capture DICOM in one of the
encodings of :data:`DICOM_VARIANTS` (8/12/16 bit, signed, rescaled, MONOCHROME1), cycled over the images so that
the readers' DICOM decoding is exercised on every path. pydicom is imported on first use.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# DICOM encodings cycled over images: (photometric, bits allocated, bits stored, signed, slope, intercept).
DICOM_VARIANTS = (
    ("MONOCHROME2", 8, 8, 0, None, None),
    ("MONOCHROME2", 16, 12, 0, None, None),
    ("MONOCHROME1", 16, 12, 0, None, None),
    ("MONOCHROME2", 16, 12, 0, 0.5, -1024.0),
    ("MONOCHROME1", 8, 8, 0, None, None),
    ("MONOCHROME2", 16, 16, 1, 2.0, 100.0),
)


def random_uid(rng: np.random.Generator, root: str) -> str:
    """A DICOM UID under ``root`` with three random components (the RSNA / SIIM style)."""
    return f"{root}.{rng.integers(1000, 20000)}.{rng.integers(1517870000, 1517880000)}.{rng.integers(100000, 999999)}"


@functools.lru_cache(maxsize=32)
def _dicom_template(variant: int, rows: int, columns: int):
    """The constant part of a fixture DICOM of one encoding (building it is most of the cost of a file)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    photometric, bits, stored_bits, signed, slope, intercept = DICOM_VARIANTS[variant]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture (as in RSNA / SIIM)
    meta.MediaStorageSOPInstanceUID = "1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("fixture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.PatientSex = "M"
    ds.PatientAge = "050Y"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ConversionType = "WSD"
    ds.StudyDate = "19010101"
    ds.PixelSpacing = [0.168, 0.168]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = stored_bits
    ds.HighBit = stored_bits - 1
    ds.PixelRepresentation = signed
    if slope is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if bits == 16:  # a VOI window spanning the modality range, as many CR exports carry
        lo, hi = _stored_range(stored_bits, signed)
        m_lo, m_hi = (lo * (slope or 1) + (intercept or 0)), (hi * (slope or 1) + (intercept or 0))
        ds.WindowCenter = f"{(m_lo + m_hi) / 2:g}"
        ds.WindowWidth = f"{m_hi - m_lo:g}"
    return ds


def _stored_range(stored_bits: int, signed: int) -> tuple[int, int]:
    return (-(2 ** (stored_bits - 1)), 2 ** (stored_bits - 1) - 1) if signed else (0, 2**stored_bits - 1)


def write_dicom(
    path: Path,
    img: np.ndarray,
    variant: int,
    *,
    patient_id: str,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    view: str = "PA",
) -> None:
    """Write ``img`` (float [0, 1], 1 = dense) as an uncompressed single-frame DICOM in encoding ``variant``
    (cycled over :data:`DICOM_VARIANTS`).

    Stored values span the full stored range; after the modality LUT (RescaleSlope/Intercept), min-max display
    and MONOCHROME1 inversion the picture equals ``img`` up to quantisation.
    """
    variant = variant % len(DICOM_VARIANTS)
    photometric, bits, stored_bits, signed, _, _ = DICOM_VARIANTS[variant]
    lo, hi = _stored_range(stored_bits, signed)
    v = 1.0 - img if photometric == "MONOCHROME1" else img
    values = np.round(lo + v * (hi - lo)).astype(np.int64)
    dtype = {(8, 0): np.uint8, (16, 0): np.uint16, (16, 1): np.int16}[(bits, signed)]
    ds = _dicom_template(variant, *img.shape)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.ViewPosition = view
    ds.PixelData = values.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
