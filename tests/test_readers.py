"""Raw-format readers: SIIM RLE, DICOM decoding, images, label tables (synthetic files and real public ones)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ace_lora.data.readers import (
    CHEXPERT_5X200_CLASSES,
    NIH_FINDINGS,
    BadInputError,
    decode_rle,
    decode_rle_union,
    read_chexpert_table,
    read_dicom,
    read_image,
    read_nih_table,
    read_rsna_labels,
    read_siim_rle,
    report_text,
    safe_name,
    select_chexpert_5x200,
    siim_image_table,
)
from data_support import CHEXPERT_COLUMNS, encode_rle, write_dicom

# ------------------------------------------------------------------------------------------- helpers


def xrv_data_dir() -> Path:
    """torchxrayvision's data folder, located without importing the package (installed --no-deps)."""
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, (
        "torchxrayvision (test-only label tables) is missing: pip install --no-deps torchxrayvision"
    )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    assert folder.is_dir(), f"torchxrayvision has no data folder at {folder}"
    return folder


# ----------------------------------------------------------------------------------------------- RLE


@pytest.mark.parametrize("shape,seed", [((7, 5), 0), ((16, 16), 1), ((9, 13), 2), ((1, 8), 3)])
def test_readers_rle_roundtrip(shape, seed):
    mask = np.random.default_rng(seed).random(shape) < 0.4
    assert np.array_equal(decode_rle(encode_rle(mask), *shape), mask)


def test_readers_rle_is_column_major_and_relative():
    # start 1, length 2 -> flat pixels 1..2 of column 0; then start 3 after that run's end (pixel 3) -> 6..6
    mask = decode_rle("1 2 3 1", 4, 3)
    expected = np.zeros((4, 3), bool)
    expected[1:3, 0] = True  # column-major: runs go down the first column
    expected[2, 1] = True  # flat index 6 = row 2, column 1
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize("empty", ["-1", " -1", "", None])
def test_readers_rle_empty(empty):
    assert not decode_rle(empty, 5, 4).any()


def test_readers_rle_union_of_components():
    a = np.zeros((10, 10), bool)
    a[1:4, 1:3] = True
    b = np.zeros((10, 10), bool)
    b[6:9, 5:9] = True
    union = decode_rle_union([encode_rle(a), encode_rle(b), "-1"], 10, 10)
    assert np.array_equal(union, a | b)


@pytest.mark.parametrize(
    "rle,why",
    [("3 4 5", "odd"), ("3 x", "non-integer"), ("0 200", "beyond"), ("2 0", "non-positive"), ("-3 2", "negative")],
)
def test_readers_rle_malformed_names_file_and_row(rle, why):
    with pytest.raises(BadInputError, match=rf"train-rle\.csv, row 7: malformed RLE.*{why}"):
        decode_rle(rle, 10, 10, source="train-rle.csv", row=7)


def test_readers_siim_table_leading_space_header_and_union(tmp_path):
    a = np.zeros((8, 8), bool)
    a[2:4, 2:4] = True
    b = np.zeros((8, 8), bool)
    b[5:7, 1:6] = True
    path = tmp_path / "train-rle.csv"
    path.write_text(f"ImageId, EncodedPixels\nimg1, {encode_rle(a)}\nimg2, -1\nimg1, {encode_rle(b)}\n")
    table = siim_image_table(read_siim_rle(path)).set_index("ImageId")
    assert table.loc["img1", "label"] == "Pneumothorax" and table.loc["img2", "label"] == "Normal"
    assert table.loc["img1", "rle_rows"] == [1, 3] and table.loc["img2", "rles"] == []
    assert np.array_equal(decode_rle_union(table.loc["img1", "rles"], 8, 8), a | b)


def test_readers_siim_table_missing_column(tmp_path):
    path = tmp_path / "train-rle.csv"
    path.write_text("ImageId,Pixels\na,-1\n")
    with pytest.raises(BadInputError, match=r"train-rle\.csv: missing column\(s\) \['EncodedPixels'\]"):
        read_siim_rle(path)


# --------------------------------------------------------------------------------------------- DICOM


def test_readers_dicom_monochrome1_is_inverted(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 500, dtype=np.uint16), (4, 1))  # (4, 8), left dark .. right bright
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2"))
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    assert mono2.dtype == np.uint8 and mono2[0, 0] == 0 and mono2[0, -1] == 255
    assert np.array_equal(mono1, 255 - mono2)


def test_readers_dicom_rescale_slope_intercept_before_window(tmp_path):
    stored = np.array([[0, 50, 100, 100]], dtype=np.uint16)
    # modality values = stored * 10 - 500 = -500, 0, 500, 500; the window is given in modality units
    path = write_dicom(
        tmp_path / "r.dcm", stored, RescaleSlope="10", RescaleIntercept="-500", WindowCenter="250", WindowWidth="500"
    )
    out = read_dicom(path)
    assert out.tolist() == [[0, 0, 255, 255]]  # window [0, 500]: -500 and 0 -> 0, 500 -> 255
    # without the modality LUT the stored values 50/100 would fall inside [0, 500] and be dark grey
    assert read_dicom(path, window="minmax").tolist() == [[0, 128, 255, 255]]


def test_readers_dicom_bits_stored_ignores_unused_high_bits(tmp_path):
    stored = np.array([[0x0000, 0x0FFF], [0xF000 | 0x0800, 0x7000]], dtype=np.uint16)  # garbage above bit 11
    out = read_dicom(write_dicom(tmp_path / "b.dcm", stored, bits_stored=12), window="minmax")
    assert out.tolist() == [[0, 255], [128, 0]]


def test_readers_dicom_without_pixel_data_names_file(tmp_path):
    path = write_dicom(tmp_path / "empty.dcm", np.zeros((4, 4), np.uint16), with_pixels=False)
    with pytest.raises(BadInputError, match=r"empty\.dcm: DICOM has no pixel data"):
        read_dicom(path)


def test_readers_dicom_not_dicom_names_file(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not a dicom at all")
    with pytest.raises(BadInputError, match=r"junk\.dcm: not a readable DICOM"):
        read_dicom(path)


def test_readers_real_chest_radiograph_decodes_plausibly():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm")
    assert path, "pydicom-data (RG1_UNCI.dcm) is missing: pip install --no-deps pydicom-data"
    img = read_dicom(path)  # MONOCHROME1, BitsStored 15, 1955 x 1841 PA chest
    h, w = img.shape
    assert (h, w) == (1955, 1841) and img.dtype == np.uint8
    rows = slice(int(0.3 * h), int(0.6 * h))
    right_lung = img[rows, int(0.20 * w) : int(0.35 * w)].mean()
    left_lung = img[rows, int(0.65 * w) : int(0.80 * w)].mean()
    mediastinum = img[rows, int(0.45 * w) : int(0.55 * w)].mean()
    assert right_lung + 30 < mediastinum and left_lung + 30 < mediastinum  # air is dark, tissue bright


# -------------------------------------------------------------------------------------------- images


def test_readers_image_truncated_and_corrupt_name_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    assert read_image(good).size == (64, 64)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(BadInputError, match=r"truncated\.png: cannot decode image"):
        read_image(truncated)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(BadInputError, match=r"corrupt\.jpg: cannot decode image"):
        read_image(corrupt)
    with pytest.raises(BadInputError, match=r"absent\.png: file not found"):
        read_image(tmp_path / "absent.png")


def test_readers_image_16bit_png_to_8bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(path)
    img = read_image(path)
    assert img.mode == "L" and np.asarray(img).tolist() == [[0, 64], [128, 255]]


# -------------------------------------------------------------------------------------------- tables


def test_readers_report_text_findings_and_impression():
    report = (
        "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n INDICATION: cough.\n\n FINDINGS: \n\n"
        " The lungs are clear.\n No effusion.\n\n IMPRESSION: \n\n No acute process.\n"
    )
    assert report_text(report) == "The lungs are clear. No effusion. No acute process."
    assert report_text("Heart size normal.\nNo edema.") == "Heart size normal. No edema."


def test_readers_rsna_real_table_counts():
    patients, boxes = read_rsna_labels(xrv_data_dir() / "kaggle_stage_2_train_labels.csv.zip")
    assert len(patients) == 26_684 and int(patients["Target"].sum()) == 6_012 and len(boxes) == 9_555
    assert (boxes[["width", "height"]] > 0).all().all() and boxes["x"].max() < 1024


def test_readers_rsna_conflicting_target_names_row(tmp_path):
    path = tmp_path / "stage_2_train_labels.csv"
    path.write_text("patientId,x,y,width,height,Target\na,,,,,0\nb,1,2,3,4,1\nb,,,,,0\n")
    with pytest.raises(BadInputError, match=r"stage_2_train_labels\.csv, row 2: patient b has rows with different"):
        read_rsna_labels(path)


def test_readers_siim_real_table_counts_and_masks():
    rle = read_siim_rle(xrv_data_dir() / "siim-pneumothorax-train-rle.csv.gz")
    table = siim_image_table(rle)
    assert len(table) == 12_047 and int(table["positive"].sum()) == 2_669
    multi = table[table["rles"].map(len) > 1].iloc[0]
    parts = [decode_rle(r, 1024, 1024) for r in multi["rles"]]
    union = decode_rle_union(multi["rles"], 1024, 1024)
    assert union.sum() == np.logical_or.reduce(parts).sum() > max(p.sum() for p in parts)
    assert encode_rle(parts[0]) == multi["rles"][0]  # the real encoding = our column-major reading
    from scipy import ndimage

    # relative starts over the column-major flattening give compact blobs (a wrong reading scatters runs)
    blobs = [ndimage.label(decode_rle(rle[0], 1024, 1024))[1] for rle in table[table["positive"]]["rles"].iloc[:20]]
    assert np.median(blobs) == 1 and max(blobs) <= 10


def test_readers_chexpert_real_5x200_deterministic():
    table = read_chexpert_table(xrv_data_dir() / "chexpert_train.csv.gz")
    first, counts = select_chexpert_5x200(table, seed=0)
    again, _ = select_chexpert_5x200(table, seed=0)
    other, _ = select_chexpert_5x200(table, seed=1)
    assert first["label"].value_counts().to_dict() == {c: 200 for c in CHEXPERT_5X200_CLASSES}
    assert list(first["Path"]) == list(again["Path"]) and list(first["Path"]) != list(other["Path"])
    assert all(v["available"] >= 200 for v in counts.values())
    assert (first["Frontal/Lateral"] == "Frontal").all()
    for cls in CHEXPERT_5X200_CLASSES:  # exactly one positive finding besides No Finding, none uncertain
        rows = first[first["label"] == cls]
        others = [
            c
            for c in [
                "Atelectasis",
                "Cardiomegaly",
                "Consolidation",
                "Edema",
                "Pleural Effusion",
                "Pneumonia",
                "Lung Opacity",
                "Support Devices",
            ]
            if c != cls
        ]
        assert (rows[cls] == 1).all() and (rows[others].fillna(0) == 0).all().all()


def test_readers_chexpert_fewer_than_requested_takes_all(tmp_path):
    cols = CHEXPERT_COLUMNS
    rows = [
        ["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "F", 50, "Frontal", "AP"] + [None] * 14,
        ["CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "F", 50, "Frontal", "AP"] + [None] * 14,
    ]
    table = pd.DataFrame(rows, columns=cols)
    table.loc[0, "Edema"] = 1
    table.loc[1, "Edema"] = 1
    table.loc[1, "Atelectasis"] = -1  # uncertain other finding excludes the image
    path = tmp_path / "train.csv"
    table.to_csv(path, index=False)
    picked, counts = select_chexpert_5x200(read_chexpert_table(path), seed=0)
    assert counts["Edema"] == {"available": 1, "selected": 1} and list(picked["patient_id"]) == ["patient00001"]


def test_readers_nih_real_table_labels():
    table = read_nih_table(xrv_data_dir() / "Data_Entry_2017_v2020.csv.gz")
    assert len(table) == 112_120
    no_finding = table["Finding Labels"] == "No Finding"
    assert (table.loc[no_finding, list(NIH_FINDINGS)] == 0).all().all()
    row = table[table["Finding Labels"] == "Cardiomegaly|Emphysema"].iloc[0]
    assert row["Cardiomegaly"] == 1 and row["Emphysema"] == 1 and row[list(NIH_FINDINGS)].sum() == 2


def test_readers_nih_unknown_finding_names_row(tmp_path):
    path = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("Image Index,Finding Labels,Patient ID\na.png,No Finding,1\nb.png,Mass|Bogus,2\n")
    with pytest.raises(BadInputError, match=r"row 2: unknown finding 'Bogus'"):
        read_nih_table(path)


def test_readers_decode_every_demo_dicom_encoding(tmp_path):
    """The demo fixtures' DICOM encodings (8/12/16 bit, signed, rescaled, MONOCHROME1) all decode to the picture."""
    from ace_lora.demo import dicom

    img = np.random.default_rng(0).random((12, 10))
    img[0, 0], img[-1, -1] = 0.0, 1.0  # span the full range (min-max display of the 8-bit variants)
    for variant in range(len(dicom.DICOM_VARIANTS)):
        path = tmp_path / f"v{variant}.dcm"
        dicom.write_dicom(path, img, variant, patient_id="p", sop_uid="1.2.3", study_uid="1.2.4", series_uid="1.2.5")
        out = read_dicom(path).astype(int)
        assert np.abs(out - np.rint(img * 255)).max() <= 2, dicom.DICOM_VARIANTS[variant]


# ------------------------------------------------------------------------------ hostile and conflicting input


@pytest.mark.parametrize("value", ["../x", "a/b", "..", ".", "", "a\\b", "a?b", "a#b", "a%2F..", "x\x00y"])
def test_readers_safe_name_refuses_what_is_not_a_file_name(value):
    with pytest.raises(BadInputError, match=r"t\.csv, row 3: dicom_id .* is not a plain file name") as err:
        safe_name(value, "t.csv", 3, "dicom_id")
    assert err.value.kind == "bad_id"


def test_readers_safe_name_keeps_real_ids():
    for value in [
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
        "1.2.276.0.7230010.3.1.4.8323329.5597",
        "00000001_000.png",
        "MHIST_aaa.png",
        "0004cfab-14fd-4e49-80ba-63a80b6bddd6",
    ]:
        assert safe_name(f" {value} ", "t.csv", 1, "id") == value


@pytest.mark.parametrize(
    "tags,match",
    [
        ({"Modality": "CT"}, "Modality is CT, not a radiograph"),
        ({"Modality": "US"}, "Modality is US"),
        ({"PhotometricInterpretation": "RGB"}, "PhotometricInterpretation is RGB"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "PhotometricInterpretation is PALETTE COLOR"),
    ],
)
def test_readers_dicom_that_is_not_a_grayscale_radiograph(tmp_path, tags, match):
    photometric = tags.pop("PhotometricInterpretation", "MONOCHROME2")
    path = write_dicom(tmp_path / "scan.dcm", np.zeros((4, 4), np.uint16), photometric, **tags)
    with pytest.raises(BadInputError, match=rf"scan\.dcm: {match}") as err:
        read_dicom(path)
    assert err.value.kind == "not_a_radiograph"
    for modality in ("CR", "DX"):  # radiographs pass
        assert read_dicom(
            write_dicom(tmp_path / f"{modality}.dcm", np.eye(4, dtype=np.uint16) * 100, Modality=modality)
        ).shape == (4, 4)


def test_readers_row_errors_go_to_on_bad_and_the_rows_are_dropped(tmp_path):
    seen: list[BadInputError] = []
    rle = tmp_path / "train-rle.csv"
    rle.write_text("ImageId, EncodedPixels\nimg1, 1 2\nimg2, -1\nimg1, -1\n../img3, -1\n")
    table = siim_image_table(read_siim_rle(rle, on_bad=seen.append), source=rle, on_bad=seen.append)
    assert list(table["ImageId"]) == ["img2"]
    assert [(e.row, e.kind) for e in seen] == [(4, "bad_id"), (1, "conflicting_rows")]
    labels = tmp_path / "stage_2_train_labels.csv"
    labels.write_text(
        "patientId,x,y,width,height,Target\na,,,,,0\nb,1,2,3,4,1\nb,,,,,0\nc,,,,,0\nc,,,,,0\n"
        "d,,,,,2\ne,1,2,3,4,1\ne,1,2,3,4,1\n"
    )
    seen.clear()
    patients, boxes = read_rsna_labels(labels, on_bad=seen.append)
    assert list(patients["patientId"]) == ["a", "e"] and len(boxes) == 2
    assert sorted((e.row, e.kind) for e in seen) == [(2, "conflicting_rows"), (5, "duplicate_id"), (6, "bad_label")]


def test_readers_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("Image Index,Finding Labels,Patient ID\n" + "a.png,No Finding,1\n" * 2000)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(BadInputError, match=r"Data_Entry_2017_v2020\.csv\.gz: the compressed table is truncated"):
        read_nih_table(path)
