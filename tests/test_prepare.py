"""``prepare``: every data set from a tiny raw folder in its distributed layout -> the processed format."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ace_lora.data import CHEXPERT_FINDINGS, NIH_FINDINGS, prepare_dataset
from ace_lora.data.prepare import PrepareError, split_by_group
from ace_lora.data.readers import BadInputError
from data_support import (
    RAW,
    SIZE,
    cfg,
    png,
    raw_chexpert,
    raw_mhist,
    raw_mimic,
    raw_nih14,
    raw_rsna,
    raw_siim,
    write_dicom,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every data set prepared once from its tiny raw layout: name -> (report, manifest, out_dir)."""
    base = tmp_path_factory.mktemp("prep")
    out = {}
    for name, make in RAW.items():
        make(base / "raw")
        report = prepare_dataset(name, base / "raw", base / "processed" / name, cfg(), workers=2)
        manifest = pd.read_csv(
            base / "processed" / name / "manifest.csv",
            keep_default_na=False,
            dtype={"patient_id": str, "study_id": str},
        )
        out[name] = (report, manifest, base / "processed" / name)
    return out


# ------------------------------------------------------------------------------------------------ tests


BASE_COLUMNS = ["image", "split", "patient_id", "study_id", "orig_width", "orig_height"]
EXTRA_COLUMNS = {
    "mimic": [*CHEXPERT_FINDINGS, "text"],
    "nih14": [*NIH_FINDINGS],
    "chexpert": ["label"],
    "rsna": ["label"],
    "siim": ["label", "mask"],
    "mhist": ["label"],
    "lc25000": ["label", "organ"],
}


@pytest.mark.parametrize("name", list(RAW))
def test_prepare_writes_processed_format(prepared, name):
    report, manifest, out = prepared[name]
    assert list(manifest.columns) == BASE_COLUMNS + EXTRA_COLUMNS[name]
    assert set(manifest["split"]) <= {"train", "val", "test"} and len(manifest) == report["counts"]["images"]
    for rel, w, h in zip(manifest["image"], manifest["orig_width"], manifest["orig_height"]):
        assert rel.startswith("images/") and rel.endswith(".png")
        with Image.open(out / rel) as img:
            assert img.mode == ("RGB" if name in ("mhist", "lc25000") else "L")
            if name == "mimic":  # training pairs: straight to SIZE x SIZE, the reference's one training resize
                assert img.size == (SIZE, SIZE)
                continue
            assert min(img.size) == SIZE
            assert abs(img.size[0] / img.size[1] - w / h) < 0.1  # aspect ratio kept
    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["counts"] == report["counts"] and saved["split_seed"] == 0
    assert saved["skipped"] == {"count": 0, "by_reason": {}, "inputs": []}
    assert "seconds" not in saved and str(out.parent.parent) not in json.dumps(saved)  # no timings, no machine paths
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_prepare_mimic_protocol(prepared):
    _, manifest, _ = prepared["mimic"]
    assert len(manifest) == 5 and all(i.endswith("a.png") for i in manifest["image"])  # frontal (PA) only
    by_study = manifest.set_index("study_id")
    assert by_study.loc["50000003", "split"] == "val" and by_study.loc["50000004", "split"] == "test"
    # labels joined by key (the chexpert table is in reverse order): 1 -> 1, -1 / 0 / blank -> 0
    assert by_study["Edema"].tolist() == [1, 0, 0, 0, 1]
    assert by_study["Cardiomegaly"].tolist() == [0, 0, 1, 0, 0]
    assert by_study.loc["50000001", "text"] == "finding text 0. impression 0."


def test_prepare_nih14_validation_is_first_fifth_of_test_list_patient_disjoint(prepared):
    report, manifest, _ = prepared["nih14"]
    assert set(manifest["split"]) == {"val", "test"}  # train_val_list is not cached
    val, test = manifest[manifest["split"] == "val"], manifest[manifest["split"] == "test"]
    # 10 test-list images; ceil(20 %) = 2 -> patient 3's two images
    assert list(val["image"]) == ["images/00000003_000.png", "images/00000003_001.png"]
    assert not set(val["patient_id"]) & set(test["patient_id"])
    row = manifest[manifest["image"] == "images/00000004_001.png"].iloc[0]
    finding = "Cardiomegaly|Effusion".split("|")
    assert all(row[c] == 1 for c in finding) and row[list(NIH_FINDINGS)].sum() == 2


def test_gzipped_nih_table_passes_fetch_and_prepares(tmp_path):
    """fetch and prepare find the NIH Data_Entry table by the same names (the registry's), gzipped ones included."""
    from ace_lora.data.fetch import verify_layout

    raw_nih14(tmp_path / "plain")
    prepare_dataset("nih14", tmp_path / "plain", tmp_path / "out_plain", cfg())
    d = raw_nih14(tmp_path / "raw")
    table = d / "Data_Entry_2017_v2020.csv"
    (d / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(table.read_bytes()))
    table.unlink()
    record = verify_layout("nih14", d)
    assert record["tables"] == {"labels": "Data_Entry_2017_v2020.csv.gz", "test_list": "test_list.txt"}
    report = prepare_dataset("nih14", tmp_path / "raw", tmp_path / "out", cfg())
    assert report["counts"]["images"] == 10 and report["skipped"]["count"] == 0
    assert (tmp_path / "out" / "manifest.csv").read_bytes() == (tmp_path / "out_plain" / "manifest.csv").read_bytes()


def test_prepare_chexpert_5x200(prepared):
    report, manifest, _ = prepared["chexpert"]
    assert (manifest["split"] == "test").all() and manifest["image"].str.contains("frontal").all()
    # 15 patients, 3 per class; patient 14 (Pleural Effusion) has an uncertain finding -> excluded
    counts = manifest["label"].value_counts().to_dict()
    assert counts == {"Atelectasis": 3, "Cardiomegaly": 3, "Consolidation": 3, "Edema": 3, "Pleural Effusion": 2}
    assert report["protocol"]["fewer_than_200_available"]["Pleural Effusion"] == 2


def test_prepare_rsna_split_and_boxes(prepared):
    _, manifest, out = prepared["rsna"]
    assert manifest["patient_id"].is_unique and set(manifest["label"]) == {"Normal", "Pneumonia"}
    assert set(manifest["split"]) <= {"train", "val", "test"} and (manifest["split"] == "train").sum() >= 8
    boxes = pd.read_csv(out / "boxes.csv")
    assert list(boxes.columns) == ["image", "x", "y", "width", "height"] and len(boxes) == 2 * 7
    positives = set(manifest.loc[manifest["label"] == "Pneumonia", "image"])
    assert set(boxes["image"]) == positives and (manifest["orig_width"] == 40).all()


def test_prepare_siim_masks_split_and_patients(prepared):
    _, manifest, out = prepared["siim"]
    assert manifest["patient_id"].nunique() == 10  # from the DICOM PatientID tag
    patients = manifest.groupby("patient_id")["split"].nunique()
    assert (patients == 1).all()  # disjoint by patient
    pos = manifest[manifest["label"] == "Pneumothorax"]
    assert len(pos) == 5 and (manifest.loc[manifest["label"] == "Normal", "mask"] == "").all()
    with Image.open(out / pos["mask"].iloc[0]) as m:
        mask = np.asarray(m) > 0
    expected = np.zeros((32, 32), bool)
    expected[4:10, 3:8] = True
    expected[20:26, 18:30] = True  # union of both RLE rows, resized (nearest) to the cached size
    small = np.asarray(Image.fromarray(expected.astype(np.uint8) * 255).resize((SIZE, SIZE), Image.NEAREST)) > 0
    assert mask.shape == (SIZE, SIZE) and np.array_equal(mask, small) and mask[2:5, 2:4].all()


def test_prepare_mhist_and_lc25000(prepared):
    _, mhist, _ = prepared["mhist"]
    assert mhist["split"].value_counts().to_dict() == {"test": 5, "train": 3}
    assert set(mhist["label"]) == {"HP", "SSA"}
    _, lc, _ = prepared["lc25000"]
    assert (lc["split"] == "test").all() and len(lc) == 10
    assert lc.groupby("organ")["label"].apply(set).to_dict() == {
        "colon": {"colon_aca", "colon_n"},
        "lung": {"lung_aca", "lung_n", "lung_scc"},
    }


def test_prepare_split_by_group_deterministic_disjoint_and_stable():
    groups = pd.Series([f"p{i // 3}" for i in range(3000)])
    fr = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = split_by_group(groups, fr, seed=0)
    shuffled = split_by_group(groups[::-1], fr, seed=0)
    assert a.equals(shuffled.sort_index())  # independent of row order
    assert not a.equals(split_by_group(groups, fr, seed=1))
    assert (pd.DataFrame({"g": groups, "s": a}).groupby("g")["s"].nunique() == 1).all()
    share = a.value_counts(normalize=True)
    assert all(abs(share[k] - v) < 0.04 for k, v in fr.items())  # 1000 patients: fractions hold within 4 points
    without = split_by_group(groups[groups != "p7"], fr, seed=0)  # one patient fewer: nobody else moves
    assert without.equals(a[groups != "p7"])


def test_prepare_deterministic_rerun(tmp_path):
    raw_rsna(tmp_path / "raw")
    a = prepare_dataset("rsna", tmp_path / "raw", tmp_path / "a", cfg(split_seed=3), workers=1)
    b = prepare_dataset("rsna", tmp_path / "raw", tmp_path / "b", cfg(split_seed=3), workers=2)
    ma, mb = (pd.read_csv(tmp_path / x / "manifest.csv") for x in "ab")
    assert ma.equals(mb) and a["counts"] == b["counts"]
    assert (tmp_path / "a" / "images" / "pat-000.png").read_bytes() == (
        tmp_path / "b" / "images" / "pat-000.png"
    ).read_bytes()


# --------------------------------------------------------------------------------------- bad inputs


def _break_siim(root: Path) -> tuple[Path, Path]:
    d = raw_siim(root, n=8)
    dicoms = sorted(d.rglob("*.dcm"))
    dicoms[1].write_bytes(dicoms[1].read_bytes()[:-300])  # truncated pixel data
    dicoms[2].unlink()  # label row whose image is missing
    return dicoms[1], dicoms[2]


def test_prepare_bad_input_error_names_file(tmp_path):
    truncated, missing = _break_siim(tmp_path / "raw")
    with pytest.raises(BadInputError, match=rf"train-rle\.csv, row \d+: image {missing.stem}\.dcm not found"):
        prepare_dataset("siim", tmp_path / "raw", tmp_path / "out" / "siim", cfg())
    missing.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(missing, np.zeros((32, 32), np.uint16))
    with pytest.raises(BadInputError, match=rf"{truncated.name}: cannot decode DICOM pixel data"):
        prepare_dataset("siim", tmp_path / "raw", tmp_path / "out" / "siim", cfg())
    assert not (tmp_path / "out" / "siim").exists()
    assert not list((tmp_path / "out").iterdir())  # no partial folder left behind


def test_prepare_bad_input_skip_counts(tmp_path, caplog):
    truncated, missing = _break_siim(tmp_path / "raw")
    with caplog.at_level("INFO"):
        report = prepare_dataset("siim", tmp_path / "raw", tmp_path / "out", cfg(on_bad_input="skip"))
    skipped = report["skipped"]
    assert skipped["count"] == 2 and report["counts"]["images"] == 6
    assert skipped["by_reason"] == {"missing_file": 1, "unreadable": 1}
    reasons = {s["file"]: s["reason"] for s in skipped["inputs"]}
    assert "not found" in reasons["train-rle.csv"]
    assert reasons[truncated.relative_to(tmp_path / "raw" / "siim").as_posix()].startswith("cannot decode DICOM")
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["skipped"] == skipped
    assert str(tmp_path) not in json.dumps(report)  # files and reasons name no machine path
    assert "2 input(s) skipped" in caplog.text and truncated.name in caplog.text  # the stage log says it too


def test_prepare_dicom_without_pixel_data_and_malformed_rle(tmp_path):
    d = raw_siim(tmp_path / "raw", n=4)
    first = sorted(d.rglob("*.dcm"))[0]
    write_dicom(first, np.zeros((32, 32), np.uint16), with_pixels=False)
    with pytest.raises(BadInputError, match=rf"{first.name}: DICOM has no pixel data"):
        prepare_dataset("siim", tmp_path / "raw", tmp_path / "out", cfg())
    write_dicom(first, np.ones((32, 32), np.uint16))
    rle = d / "train-rle.csv"
    rle.write_text(rle.read_text().replace(rle.read_text().splitlines()[1].split(", ")[1], "5 6 7", 1))
    with pytest.raises(BadInputError, match=r"train-rle\.csv, row 1: malformed RLE"):
        prepare_dataset("siim", tmp_path / "raw", tmp_path / "out", cfg())


def test_prepare_missing_column_names_file(tmp_path):
    d = raw_mhist(tmp_path / "raw")
    table = pd.read_csv(d / "annotations.csv").drop(columns=["Partition"])
    table.to_csv(d / "annotations.csv", index=False)
    with pytest.raises(BadInputError, match=r"annotations\.csv: missing column\(s\) \['Partition'\]"):
        prepare_dataset("mhist", tmp_path / "raw", tmp_path / "out", cfg())


def test_prepare_failure_keeps_previous_good_output(tmp_path):
    d = raw_mhist(tmp_path / "raw")
    out = tmp_path / "processed" / "mhist"
    prepare_dataset("mhist", tmp_path / "raw", out, cfg())
    before = (out / "manifest.csv").read_text()
    png(d / "images" / "MHIST_003.png", (24, 24), rgb=True)
    (d / "images" / "MHIST_003.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInputError, match=r"MHIST_003\.png: cannot decode image"):
        prepare_dataset("mhist", tmp_path / "raw", out, cfg())
    assert (out / "manifest.csv").read_text() == before and (out / "images" / "MHIST_003.png").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["mhist"]


def test_prepare_unknown_or_absent_raw(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'cifar'"):
        prepare_dataset("cifar", tmp_path, tmp_path / "out", cfg())
    with pytest.raises(PrepareError, match=r"fetch rsna"):
        prepare_dataset("rsna", tmp_path, tmp_path / "out", cfg())
    (tmp_path / "lc25000" / "lung_colon_image_set").mkdir(parents=True)
    with pytest.raises(PrepareError, match=r"no LC25000 class folder"):
        prepare_dataset("lc25000", tmp_path, tmp_path / "out", cfg())


def test_prepare_gzip_nih_table(tmp_path):
    d = raw_nih14(tmp_path / "raw")
    table = d / "Data_Entry_2017_v2020.csv"
    with gzip.open(d / "Data_Entry_2017_v2020.csv.gz", "wb") as handle:
        handle.write(table.read_bytes())
    table.unlink()
    report = prepare_dataset("nih14", tmp_path / "raw", tmp_path / "out", cfg())
    assert report["counts"]["splits"] == {"test": 8, "val": 2}


# ------------------------------------------------------------------------------ the demo fixtures (part 1)


@pytest.mark.parametrize("name", list(RAW))
def test_prepare_demo_fixture(tmp_path, name):
    from ace_lora.config import DemoConfig
    from ace_lora.demo import write_fixture

    demo = DemoConfig(seed=1, n_train=12, n_per_class=4, image_size=32)
    summary = write_fixture(name, tmp_path / "raw" / name, demo)
    report = prepare_dataset(name, tmp_path / "raw", tmp_path / "out" / name, cfg(), workers=2)
    manifest = pd.read_csv(tmp_path / "out" / name / "manifest.csv", keep_default_na=False, dtype={"patient_id": str})
    assert list(manifest.columns) == BASE_COLUMNS + EXTRA_COLUMNS[name] and report["skipped"]["count"] == 0
    assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()  # patient-disjoint splits
    if name in ("rsna", "siim"):
        assert len(manifest) == summary["images"] and (manifest["label"] != "Normal").sum() == summary["positive"]
        assert {"train", "test"} <= set(manifest["split"])
    if name == "rsna":
        assert len(pd.read_csv(tmp_path / "out" / name / "boxes.csv")) == summary["boxes"]
    if name == "siim":
        positives = manifest[manifest["label"] == "Pneumothorax"]
        for rel in positives["mask"]:
            with Image.open(tmp_path / "out" / name / rel) as m:
                assert np.asarray(m).any()
    if name == "chexpert":
        assert manifest["label"].value_counts().to_dict() == {c: 4 for c in EXPECTED_5X200}
    if name in ("mhist", "lc25000"):
        assert len(manifest) == summary["images"]
    if name == "mimic":
        assert len(manifest) == summary["images"] - summary["lateral_images"]
        assert manifest["text"].str.len().min() > 0 and not manifest["text"].str.contains("INDICATION").any()


EXPECTED_5X200 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def test_prepare_mimic_missing_image_and_report(tmp_path):
    d = raw_mimic(tmp_path / "raw")
    next(d.rglob("d1a.jpg")).unlink()
    next(d.rglob("s50000004.txt")).unlink()
    with pytest.raises(BadInputError, match=r"metadata\.csv\.gz, row 3: image d1a\.jpg not found"):
        prepare_dataset("mimic", tmp_path / "raw", tmp_path / "out", cfg())
    report = prepare_dataset("mimic", tmp_path / "raw", tmp_path / "out", cfg(on_bad_input="skip"))
    assert report["counts"]["images"] == 3 and report["skipped"]["count"] == 2
    inputs = sorted(report["skipped"]["inputs"], key=lambda s: s["row"])
    assert [s["row"] for s in inputs] == [3, 7] and "s50000004.txt" in inputs[1]["reason"]


def test_prepare_chexpert_flat_layout(tmp_path):
    """train.csv directly in the raw folder, images beside it (Path still starts with CheXpert-v1.0-small/)."""
    nested = raw_chexpert(tmp_path / "nested")
    flat = tmp_path / "raw" / "chexpert"
    flat.parent.mkdir()
    (nested / "CheXpert-v1.0-small").rename(flat)
    report = prepare_dataset("chexpert", tmp_path / "raw", tmp_path / "out", cfg())
    assert report["counts"]["images"] == 14


def test_prepare_nih14_test_list_name_missing_from_table(tmp_path):
    d = raw_nih14(tmp_path / "raw")
    (d / "test_list.txt").write_text((d / "test_list.txt").read_text() + "99999999_000.png\n")
    with pytest.raises(BadInputError, match=r"test_list\.txt, row 11: image 99999999_000\.png is not in"):
        prepare_dataset("nih14", tmp_path / "raw", tmp_path / "out", cfg())


# ------------------------------------------------------------------------- determinism, seeds, stable splits


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["siim", "mimic"])
def test_prepare_twice_gives_identical_bytes(tmp_path, name):
    RAW[name](tmp_path / "raw")
    prepare_dataset(name, tmp_path / "raw", tmp_path / "a", cfg(), workers=1)
    prepare_dataset(name, tmp_path / "raw", tmp_path / "b", cfg(), workers=2)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert "prepare_report.json" in a and len(a) > 3 and a == b


def test_chexpert_sample_has_its_own_seed(tmp_path, monkeypatch):
    from ace_lora.data import collectors

    monkeypatch.setattr(collectors, "CHEXPERT_PER_CLASS", 2)  # 3 eligible per class: the sample depends on the seed
    raw_chexpert(tmp_path / "raw")

    def picked(**kw) -> list[str]:
        prepare_dataset("chexpert", tmp_path / "raw", tmp_path / "out", cfg(**kw))
        return pd.read_csv(tmp_path / "out" / "manifest.csv")["image"].tolist()

    base = picked(split_seed=0, chexpert_seed=0)
    assert picked(split_seed=7, chexpert_seed=0) == base  # re-splitting RSNA/SIIM leaves CheXpert alone
    assert [s for s in (1, 2, 3) if picked(split_seed=0, chexpert_seed=s) != base]
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["protocol"]["sample_seed"] == 3


def test_skipping_one_rsna_patient_moves_no_other(tmp_path):
    d = raw_rsna(tmp_path / "raw", n=40)
    prepare_dataset("rsna", tmp_path / "raw", tmp_path / "a", cfg())
    (d / "stage_2_train_images" / "pat-007.dcm").unlink()
    report = prepare_dataset("rsna", tmp_path / "raw", tmp_path / "b", cfg(on_bad_input="skip"))
    assert report["skipped"]["count"] == 1
    a, b = (pd.read_csv(tmp_path / x / "manifest.csv").set_index("patient_id")["split"] for x in "ab")
    assert "pat-007" in a.index and "pat-007" not in b.index
    assert b.equals(a.drop("pat-007"))


@pytest.mark.parametrize("name", ["rsna", "siim"])
def test_ci_demo_test_splits_hold_both_classes(tmp_path, name):
    from ace_lora.config import DemoConfig
    from ace_lora.demo import write_fixture

    demo = DemoConfig(n_train=192, n_per_class=8)  # the demo of tests/test_workflow.py
    write_fixture(name, tmp_path / "raw" / name, demo)
    report = prepare_dataset(name, tmp_path / "raw", tmp_path / "out", cfg(), workers=2)
    test = report["counts"]["classes"]["test"]
    assert len(test) == 2 and min(test.values()) >= 3, test


# ---------------------------------------------------------------- data conflicts: errors or counted skips


def _snapshot_then_break(tmp_path: Path, name: str, breaker, match: str, kind: str, n_skipped: int = 1):
    """Prepare good raw data, break it, check the error (names file/row), the untouched previous output, and the
    counted skip; returns the skip report."""
    d = RAW[name](tmp_path / "raw")
    out = tmp_path / "processed" / name
    prepare_dataset(name, tmp_path / "raw", out, cfg())
    before = _tree(out)
    breaker(d)
    with pytest.raises(BadInputError, match=match):
        prepare_dataset(name, tmp_path / "raw", out, cfg())
    assert _tree(out) == before and sorted(p.name for p in out.parent.iterdir()) == [name]
    report = prepare_dataset(name, tmp_path / "raw", tmp_path / "skip" / name, cfg(on_bad_input="skip"))
    assert report["skipped"]["count"] == n_skipped and report["skipped"]["by_reason"] == {kind: n_skipped}
    return report


def _edit_csv(path: Path, edit) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(table)
    table.to_csv(path, index=False)


def test_siim_minus_one_and_rle_for_one_image(tmp_path):
    def add_minus_one(d):
        rle = d / "train-rle.csv"
        rle.write_text(rle.read_text() + "1.2.276.0.4, -1\n")  # image 4 has two RLE rows already

    report = _snapshot_then_break(
        tmp_path,
        "siim",
        add_minus_one,
        r"train-rle\.csv, row 6: image 1\.2\.276\.0\.4 has both a '-1'.*RLE rows",
        "conflicting_rows",
    )
    assert report["skipped"]["inputs"][0]["file"] == "train-rle.csv"


def test_duplicated_nih_image_index(tmp_path):
    def dup(d):
        table = d / "Data_Entry_2017_v2020.csv"
        lines = table.read_text().splitlines()
        table.write_text("\n".join(lines + [lines[6]]) + "\n")  # row 6 (image 00000003_001.png) again

    _snapshot_then_break(
        tmp_path,
        "nih14",
        dup,
        r"Data_Entry_2017_v2020\.csv, row 15: Image Index 00000003_001\.png "
        r"appears on rows \[6, 15\]",
        "duplicate_id",
    )


def test_duplicated_mimic_dicom_id(tmp_path):
    def dup(d):
        meta = pd.read_csv(d / "mimic-cxr-2.0.0-metadata.csv.gz")
        pd.concat([meta, meta.iloc[[2]]]).to_csv(d / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)

    _snapshot_then_break(
        tmp_path, "mimic", dup, r"metadata\.csv\.gz, row 11: dicom_id d1a appears on rows \[3, 11\]", "duplicate_id"
    )


def test_duplicated_rsna_negative_patient(tmp_path):
    def dup(d):
        table = d / "stage_2_train_labels.csv"
        table.write_text(table.read_text() + "pat-001,,,,,0\n")

    _snapshot_then_break(
        tmp_path, "rsna", dup, r"stage_2_train_labels\.csv, row 28: patient pat-001 appears on rows", "duplicate_id"
    )


def test_duplicated_chexpert_path(tmp_path):
    def dup(d):
        table = d / "CheXpert-v1.0-small" / "train.csv"
        lines = table.read_text().splitlines()
        table.write_text("\n".join(lines + [lines[1]]) + "\n")

    _snapshot_then_break(
        tmp_path,
        "chexpert",
        dup,
        r"train\.csv, row 31: Path CheXpert-v1\.0-small/train/"
        r"patient00000/study1/view1_frontal\.jpg appears on rows \[1, 31\]",
        "duplicate_id",
    )


def test_duplicated_mhist_image_name(tmp_path):
    def dup(d):
        table = d / "annotations.csv"
        lines = table.read_text().splitlines()
        table.write_text("\n".join(lines + [lines[3]]) + "\n")

    _snapshot_then_break(
        tmp_path, "mhist", dup, r"annotations\.csv, row 9: Image Name MHIST_002\.png appears", "duplicate_id"
    )


def test_empty_mimic_report(tmp_path):
    def empty(d):
        next(d.rglob("s50000002.txt")).write_text("  \n\n")

    report = _snapshot_then_break(
        tmp_path,
        "mimic",
        empty,
        r"s50000002\.txt: the report is empty.*image d1a, "
        r"mimic-cxr-2\.0\.0-metadata\.csv\.gz row 3",
        "empty_report",
    )
    assert report["skipped"]["inputs"][0]["file"] == "files/p10/p10000001/s50000002.txt"


def test_non_numeric_chexpert_label(tmp_path):
    def bad(d):
        _edit_csv(d / "CheXpert-v1.0-small" / "train.csv", lambda t: t.loc.__setitem__((4, "Edema"), "yes"))

    _snapshot_then_break(
        tmp_path,
        "chexpert",
        bad,
        r"train\.csv, row 5: label Edema must be blank, 1, 0 or -1, "
        r"got 'yes'",
        "bad_label",
    )


def test_non_numeric_mimic_label(tmp_path):
    def bad(d):
        path = d / "mimic-cxr-2.0.0-chexpert.csv.gz"
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.loc[0, "Cardiomegaly"] = "positive"
        table.to_csv(path, index=False)

    # skip: the label row is dropped and its study counts as unlabelled (all 0, like studies absent from the table)
    _snapshot_then_break(
        tmp_path,
        "mimic",
        bad,
        r"chexpert\.csv\.gz, row 1: label Cardiomegaly must be blank, 1, 0 "
        r"or -1, got 'positive'",
        "bad_label",
    )


def _rewrite_dicom(path: Path, **tags) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_dicom_that_is_not_a_radiograph(tmp_path):
    def ct(d):
        _rewrite_dicom(d / "stage_2_train_images" / "pat-004.dcm", Modality="CT")

    _snapshot_then_break(tmp_path, "rsna", ct, r"pat-004\.dcm: Modality is CT, not a radiograph", "not_a_radiograph")


def test_dicom_in_colour(tmp_path):
    def rgb(d):
        path = d / "stage_2_train_images" / "pat-005.dcm"
        write_dicom(path, np.zeros((40, 40), np.uint16), "RGB", PatientID="pat-005")

    _snapshot_then_break(tmp_path, "rsna", rgb, r"pat-005\.dcm: PhotometricInterpretation is RGB", "not_a_radiograph")


def test_siim_image_size_disagreeing_with_the_rle_grid_blames_the_dicom(tmp_path):
    def shrink(d):
        path = next(d.rglob("1.2.276.0.4.dcm"))
        write_dicom(path, np.zeros((16, 16), np.uint16), PatientID="P2")

    _snapshot_then_break(
        tmp_path,
        "siim",
        shrink,
        r"1\.2\.276\.0\.4\.dcm: image is 16x16 .* rows \[6, 7\] run to "
        r"pixel \d+: the DICOM's size disagrees with the RLE grid",
        "mask_mismatch",
    )


def test_truncated_gzip_table_names_the_file(tmp_path):
    d = raw_mimic(tmp_path / "raw")
    out = tmp_path / "processed" / "mimic"
    prepare_dataset("mimic", tmp_path / "raw", out, cfg())
    before = _tree(out)
    table = d / "mimic-cxr-2.0.0-metadata.csv.gz"
    table.write_bytes(table.read_bytes()[:-20])
    with pytest.raises(BadInputError, match=r"metadata\.csv\.gz: the compressed table is truncated or corrupt"):
        prepare_dataset("mimic", tmp_path / "raw", out, cfg(on_bad_input="skip"))  # a whole table: never skipped
    assert _tree(out) == before


@pytest.mark.parametrize(
    "name,edit,match",
    [
        (
            "rsna",
            lambda d: (d / "stage_2_train_labels.csv").write_text(
                (d / "stage_2_train_labels.csv").read_text().replace("pat-002", "../../pat-002")
            ),
            r"stage_2_train_labels\.csv, row 4: patientId '\.\./\.\./pat-002' is not a plain file name",
        ),
        (
            "siim",
            lambda d: (d / "train-rle.csv").write_text(
                (d / "train-rle.csv").read_text().replace("1.2.276.0.3,", "../../1.2.276.0.3,")
            ),
            r"train-rle\.csv, row 5: ImageId '\.\./\.\./1\.2\.276\.0\.3' is not a plain file name",
        ),
        (
            "mhist",
            lambda d: _edit_csv(d / "annotations.csv", lambda t: t.loc.__setitem__((2, "Image Name"), "../x.png")),
            r"annotations\.csv, row 3: Image Name '\.\./x\.png' is not a plain file name",
        ),
        (
            "chexpert",
            lambda d: _edit_csv(
                d / "CheXpert-v1.0-small" / "train.csv",
                lambda t: t.loc.__setitem__(
                    (0, "Path"), "CheXpert-v1.0-small/train/patient00000/study1/../../../../../../etc/x.jpg"
                ),
            ),
            r"train\.csv, row 1: Path .* is not a relative path inside the data set",
        ),
        (
            "mimic",
            lambda d: _edit_csv(
                d / "mimic-cxr-2.0.0-metadata.csv.gz", lambda t: t.loc.__setitem__((4, "dicom_id"), "../../../outside")
            ),
            r"metadata\.csv\.gz, row 5: dicom_id '\.\./\.\./\.\./outside' is not a plain file name",
        ),
    ],
)
def test_table_ids_cannot_reach_outside_their_folder(tmp_path, name, edit, match):
    _snapshot_then_break(tmp_path, name, edit, match, "bad_id")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["processed", "raw", "skip"]  # nothing written elsewhere
