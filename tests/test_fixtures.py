"""The demo generator (ace_lora.demo): each data set's exact raw layout, DICOM encodings, SIIM RLE, determinism,
the demo's finding -> pattern design and the tiny tokenizer vocabulary."""

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from ace_lora import demo, registry
from ace_lora.config import DemoConfig, PromptsConfig
from ace_lora.demo import dicom, painters, reports
from ace_lora.demo.vocab import demo_vocabulary
from ace_lora.models.tokenizer import TINY_VOCAB_FILE, basic_tokens, write_tokenizer
from ace_lora.prompts import BENCHMARK_CLASSES, build_prompts

SMALL = DemoConfig(seed=3, n_train=300, n_per_class=6, image_size=32)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    summaries = {name: demo.write_fixture(name, root / name, SMALL) for name in registry.DATASET_NAMES}
    return root, summaries


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_gz(path: Path) -> pd.DataFrame:
    with gzip.open(path) as f:
        return pd.read_csv(f, dtype=str, keep_default_na=False)


def _decode_rle(rle: str, h: int, w: int) -> np.ndarray:
    """Independent decoder: relative starts over the column-major flattening."""
    flat = np.zeros(h * w, bool)
    nums = [int(x) for x in rle.split()]
    pos = 0
    for start, length in zip(nums[0::2], nums[1::2]):
        pos += start
        flat[pos : pos + length] = True
        pos += length
    return flat.reshape(w, h).T


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        demo.write_fixture("imagenet", tmp_path, SMALL)


@pytest.mark.parametrize("name", ["mimic", "siim", "mhist"])
def test_deterministic_for_a_seed(tmp_path, raw, name):
    root, _ = raw
    demo.write_fixture(name, tmp_path / "again", SMALL)
    assert _tree_digest(tmp_path / "again") == _tree_digest(root / name)
    demo.write_fixture(name, tmp_path / "other", DemoConfig(seed=4, n_train=300, n_per_class=6, image_size=32))
    assert _tree_digest(tmp_path / "other") != _tree_digest(root / name)


def test_mimic_layout(raw):
    root, summaries = raw
    d = root / "mimic"
    meta = _read_gz(d / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = _read_gz(d / "mimic-cxr-2.0.0-split.csv.gz")
    chx = _read_gz(d / "mimic-cxr-2.0.0-chexpert.csv.gz")
    assert list(meta.columns[:5]) == [
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
    ]
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert list(chx.columns) == ["subject_id", "study_id", *sorted(registry.CHEXPERT_FINDINGS)]
    assert set(meta["ViewPosition"]) >= {"PA", "AP", "LATERAL"}
    assert set(split["split"]) == {"train", "validate", "test"}
    assert set(split["dicom_id"]) == set(meta["dicom_id"])
    frontal_train = meta.merge(split[["dicom_id", "split"]], on="dicom_id")
    frontal_train = frontal_train[frontal_train.ViewPosition.isin(["PA", "AP"]) & (frontal_train.split == "train")]
    assert len(frontal_train) == SMALL.n_train
    values = set(chx[list(registry.CHEXPERT_FINDINGS)].to_numpy().ravel())
    assert values <= {"1.0", "0.0", "-1.0", ""} and {"1.0", "0.0", ""} <= values
    # one label row per study, keyed by study, in an order that differs from the metadata's
    assert chx["study_id"].is_unique and set(chx["study_id"]) == set(meta["study_id"])
    assert list(chx["study_id"]) != list(dict.fromkeys(meta["study_id"]))
    assert all(re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", i) for i in meta["dicom_id"])
    for rec in meta.head(20).itertuples():
        study = d / "files" / f"p{rec.subject_id[:2]}" / f"p{rec.subject_id}" / f"s{rec.study_id}"
        img = Image.open(study / f"{rec.dicom_id}.jpg")
        assert img.mode == "L" and img.size == (SMALL.image_size, SMALL.image_size)
        text = study.with_suffix(".txt").read_text()
        assert "IMPRESSION:" in text
    reports = list((d / "files").rglob("s*.txt"))
    assert len(reports) == summaries["mimic"]["studies"]
    assert sum("FINDINGS:" in p.read_text() for p in reports) > 0.7 * len(reports)


def test_mimic_reports_name_the_labelled_findings(raw):
    root, _ = raw
    d = root / "mimic"
    chx = _read_gz(d / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id")
    hits = total = 0
    for p in (d / "files").rglob("s*.txt"):
        row = chx.loc[p.stem[1:]]
        text = p.read_text().lower()
        for f in registry.CHEXPERT_FINDINGS:
            if row[f] == "1.0" and f != "No Finding":
                total += 1
                hits += reports.REPORT_FORMS[f][0][0] in text
            if row["No Finding"] == "1.0":
                assert "no acute" in text or "normal" in text or "clear" in text
    assert total > 20 and hits / total > 0.7


def test_nih14_layout(raw):
    root, summaries = raw
    d = root / "nih14"
    header = (d / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert header == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    df = pd.read_csv(d / "Data_Entry_2017_v2020.csv")
    assert len(df.columns) == 11
    labels = {lab for v in df["Finding Labels"] for lab in v.split("|")}
    assert labels <= set(registry.NIH_FINDINGS) | {"No Finding"} and "No Finding" in labels
    assert any("|" in v for v in df["Finding Labels"])
    test = (d / "test_list.txt").read_text().split()
    trainval = (d / "train_val_list.txt").read_text().split()
    assert not set(test) & set(trainval) and set(test) | set(trainval) == set(df["Image Index"])
    files = {p.name: p for p in d.glob("images_*/images/*.png")}
    assert set(files) == set(df["Image Index"])
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) for n in files)


def test_chexpert_layout_and_5x200_candidates(raw):
    root, _ = raw
    d = root / "chexpert"
    df = pd.read_csv(d / "CheXpert-v1.0-small" / "train.csv")
    assert list(df.columns) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *registry.CHEXPERT_TABLE_ORDER]
    assert all((d / p).is_file() for p in df["Path"])
    pattern = r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg"
    assert df["Path"].str.fullmatch(pattern).all()
    assert set(df["Frontal/Lateral"]) == {"Frontal", "Lateral"}
    values = df[list(registry.CHEXPERT_TABLE_ORDER)]
    arr = values.to_numpy().ravel()
    assert set(arr[~np.isnan(arr)].tolist()) <= {1.0, 0.0, -1.0}
    assert (values == -1).any().any() and values.isna().any().any()
    frontal = df[df["Frontal/Lateral"] == "Frontal"]
    others = [f for f in registry.CHEXPERT_TABLE_ORDER if f != "No Finding"]
    v = frontal[others].fillna(0)
    for cls in registry.CHEXPERT_5X200_CLASSES:
        rest = [c for c in others if c != cls]
        assert ((v[cls] == 1) & (v[rest] == 0).all(axis=1)).sum() == SMALL.n_per_class


def _dicom_to_display(ds) -> np.ndarray:
    """Modality LUT, min-max to [0, 1], MONOCHROME1 inverted."""
    arr = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    arr = (arr - arr.min()) / (arr.max() - arr.min())
    return 1 - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr


@pytest.mark.parametrize("variant", range(len(dicom.DICOM_VARIANTS)))
def test_dicom_variants_round_trip(tmp_path, variant):
    img = np.clip(np.linspace(0, 1, 24 * 24).reshape(24, 24) + 0.0, 0, 1)
    path = tmp_path / "x.dcm"
    dicom.write_dicom(path, img, variant, patient_id="p1", sop_uid="1.2.3.4", study_uid="1.2.3", series_uid="1.2.3.5")
    ds = pydicom.dcmread(path)
    photometric, bits, stored, signed, slope, _ = dicom.DICOM_VARIANTS[variant]
    assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (
        photometric,
        bits,
        stored,
        signed,
    )
    assert ds.Rows == ds.Columns == 24 and ds.SOPInstanceUID == "1.2.3.4" and ds.file_meta.TransferSyntaxUID
    assert ("RescaleSlope" in ds) == (slope is not None)
    assert np.abs(_dicom_to_display(ds) - img).max() < 2.5 / 255


def test_rsna_layout(raw):
    root, _ = raw
    d = root / "rsna"
    assert (d / "stage_2_train_labels.csv").read_text().splitlines()[0] == "patientId,x,y,width,height,Target"
    df = pd.read_csv(d / "stage_2_train_labels.csv")
    neg, pos = df[df.Target == 0], df[df.Target == 1]
    box_cols = ["x", "y", "width", "height"]
    assert neg[box_cols].isna().all().all() and pos[box_cols].notna().all().all()
    assert pos.patientId.value_counts().max() >= 2  # several boxes per patient
    n = demo.images_per_class("rsna", SMALL)
    assert n * demo.TEST_FRACTION["rsna"] >= SMALL.n_per_class
    assert df.patientId.nunique() == 2 * n and pos.patientId.nunique() == n
    size = 2 * SMALL.image_size
    assert ((pos.x >= 0) & (pos.x + pos.width <= size) & (pos.y + pos.height <= size)).all()
    kinds = set()
    for pid in df.patientId.unique():
        ds = pydicom.dcmread(d / "stage_2_train_images" / f"{pid}.dcm")
        assert ds.PatientID == pid and ds.Rows == size
        kinds.add((ds.PhotometricInterpretation, ds.BitsStored))
    assert {"MONOCHROME1", "MONOCHROME2"} <= {k[0] for k in kinds} and {8, 12} <= {k[1] for k in kinds}
    # the boxes enclose the drawn opacity: brighter than the same place in normal images
    box = pos.iloc[0]
    ds = pydicom.dcmread(d / "stage_2_train_images" / f"{box.patientId}.dcm")
    img = _dicom_to_display(ds)
    cx, cy = int(box.x + box.width / 2), int(box.y + box.height / 2)
    assert (
        img[cy, cx] > np.median(img[int(box.y) : int(box.y + box.height), int(box.x) : int(box.x + box.width)]) - 1e-9
    )


def test_siim_layout_and_rle(raw):
    root, _ = raw
    d = root / "siim"
    text = (d / "train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n")
    df = pd.read_csv(d / "train-rle.csv", dtype=str)
    assert list(df.columns) == ["ImageId", " EncodedPixels"]
    enc = df[" EncodedPixels"].str.strip()
    assert (enc == "-1").sum() == demo.images_per_class("siim", SMALL)
    assert df[enc != "-1"].ImageId.value_counts().max() >= 2  # several components = several rows
    paths = {p.stem: p for p in (d / "dicom-images-train").glob("*/*/*.dcm")}
    assert set(paths) == set(df.ImageId)
    for image_id, group in df[enc != "-1"].groupby("ImageId"):
        ds = pydicom.dcmread(paths[image_id])
        assert ds.SOPInstanceUID == image_id
        assert paths[image_id].parent.name == ds.SeriesInstanceUID
        assert paths[image_id].parent.parent.name == ds.StudyInstanceUID
        masks = [_decode_rle(r, ds.Rows, ds.Columns) for r in group[" EncodedPixels"]]
        assert all(m.any() for m in masks) and not (masks[0] & masks[-1]).any() or len(masks) == 1
        img = _dicom_to_display(ds)
        union = np.logical_or.reduce(masks)
        assert img[union].mean() < img[~union].mean()  # the pneumothorax (air) is drawn where the mask is


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.3
        assert np.array_equal(_decode_rle(demo.encode_rle(mask), 17, 23), mask)
    assert demo.encode_rle(np.zeros((4, 4), bool)) == "-1"
    m = np.zeros((4, 4), bool)
    m[1:3, 0] = True  # column-major: pixels 1, 2
    m[0, 1] = True  # pixel 4
    assert demo.encode_rle(m) == "1 2 1 1"


def test_mhist_layout(raw):
    root, _ = raw
    d = root / "mhist"
    df = pd.read_csv(d / "annotations.csv")
    assert list(df.columns) == [
        "Image Name",
        "Majority Vote Label",
        "Number of Annotators who Selected SSA (Out of 7)",
        "Partition",
    ]
    assert set(df["Majority Vote Label"]) == {"HP", "SSA"} and set(df["Partition"]) == {"train", "test"}
    votes = df["Number of Annotators who Selected SSA (Out of 7)"]
    assert ((votes >= 4) == (df["Majority Vote Label"] == "SSA")).all()
    assert df["Image Name"].str.fullmatch(r"MHIST_[a-z]{3}\.png").all() and df["Image Name"].is_unique
    assert all(Image.open(d / "images" / n).mode == "RGB" for n in df["Image Name"])


def test_lc25000_layout(raw):
    root, _ = raw
    base = root / "lc25000" / "lung_colon_image_set"
    for organ, classes in {
        "lung_image_sets": ["lung_aca", "lung_n", "lung_scc"],
        "colon_image_sets": ["colon_aca", "colon_n"],
    }.items():
        for cls in classes:
            files = sorted((base / organ / cls).glob("*.jpeg"))
            assert len(files) == SMALL.n_per_class
            assert re.fullmatch(r"(lungaca|lungn|lungscc|colonca|colonn)\d+\.jpeg", files[0].name)
            assert Image.open(files[0]).mode == "RGB"


def test_histopathology_classes_differ_in_colour():
    rng = np.random.default_rng(0)
    means = {
        c: np.mean([painters.render_histo(32, c, rng).mean(axis=(0, 1)) for _ in range(8)], axis=0)
        for c in ("lung_aca", "lung_n", "lung_scc")
    }
    assert min(np.abs(means[a] - means[b]).max() for a in means for b in means if a < b) > 3


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float64).ravel() / 255


def test_findings_transfer_from_mimic_to_chexpert(raw):
    """The same finding -> pattern mapping in both sets: a linear read-out fitted on the MIMIC frontal pairs
    (pixels -> the five findings) classifies CheXpert's single-finding images far above chance (the premise
    of the demo's zero-shot transfer)."""
    root, _ = raw
    d = root / "mimic"
    meta = _read_gz(d / "mimic-cxr-2.0.0-metadata.csv.gz")
    chx = _read_gz(d / "mimic-cxr-2.0.0-chexpert.csv.gz").set_index("study_id")
    xs, ys = [], []
    for rec in meta[meta.ViewPosition.isin(["PA", "AP"])].itertuples():
        row = chx.loc[rec.study_id]
        study = d / "files" / f"p{rec.subject_id[:2]}" / f"p{rec.subject_id}" / f"s{rec.study_id}"
        path = study / f"{rec.dicom_id}.jpg"
        xs.append(np.append(_pixels(path), 1.0))
        ys.append([row[c] == "1.0" for c in registry.CHEXPERT_5X200_CLASSES])
    x, y = np.array(xs), np.array(ys, dtype=np.float64)
    w = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ y)  # ridge regression
    df = pd.read_csv(root / "chexpert" / "CheXpert-v1.0-small" / "train.csv")
    frontal = df[df["Frontal/Lateral"] == "Frontal"]
    others = [f for f in registry.CHEXPERT_TABLE_ORDER if f != "No Finding"]
    correct = total = 0
    for k, cls in enumerate(registry.CHEXPERT_5X200_CLASSES):
        rest = [c for c in others if c != cls]
        sel = frontal[(frontal[cls] == 1) & (frontal[rest].fillna(0) == 0).all(axis=1)]
        for p in sel.Path:
            correct += int(np.argmax(np.append(_pixels(root / "chexpert" / p), 1.0) @ w) == k)
            total += 1
    assert correct / total > 0.8  # chance = 0.2


def test_demo_reports_fit_the_tiny_context(raw):
    root, _ = raw
    lengths = []
    for p in (root / "mimic" / "files").rglob("s*.txt"):
        text = p.read_text()
        body = " ".join(text.split("FINDINGS:")[-1].split()) if "FINDINGS:" in text else text.split("IMPRESSION:")[1]
        body = body.replace("IMPRESSION:", " ")
        lengths.append(len(basic_tokens(body)) + 2)
    assert np.mean(np.array(lengths) <= 40) > 0.95


def test_vocabulary_file_is_current_and_covers_demo_text(raw, tmp_path):
    import transformers

    vocab = demo_vocabulary()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab)
    shipped = TINY_VOCAB_FILE.read_text().splitlines()
    assert shipped == vocab, "ace_lora/assets/tiny_vocab.txt is stale: run ace_lora.demo.vocab.write_demo_vocab()"
    folder = write_tokenizer(tmp_path / "tok")
    by_folder = transformers.BertTokenizerFast.from_pretrained(str(folder))
    by_vocab = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(shipped)}, do_lower_case=True)
    root, _ = raw
    texts = [p.read_text() for p in (root / "mimic" / "files").rglob("s*.txt")]
    prompts = build_prompts(PromptsConfig(), list(BENCHMARK_CLASSES))
    texts += [t for per in prompts.values() for ts in per.values() for t in ts]
    for tok in (by_folder, by_vocab):
        assert tok.pad_token_id == 0 and tok.unk_token_id == 1
        ids = tok(texts)["input_ids"]
        unk = [t for t, i in zip(texts, ids) if tok.unk_token_id in i]
        assert not unk, unk[:3]
        words = tok.convert_ids_to_tokens(tok("Small right pleural effusion.")["input_ids"])
        assert words == ["[CLS]", "small", "right", "pleural", "effusion", ".", "[SEP]"]
    text = "A chest X-ray image of edema."
    assert by_folder(text)["input_ids"] == by_vocab(text)["input_ids"]


def test_demo_generation_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    demo.write_fixture("mimic", tmp_path / "m", DemoConfig(n_train=200, image_size=64))
    assert time.perf_counter() - start < 10  # ~0.5 s; the default 2,000 pairs take a few seconds
