"""Benchmark registry, ``load_benchmark`` and the torch Datasets over prepared data."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ace_lora.data import CHEXPERT_FINDINGS, DATASETS, NIH_FINDINGS, prepare_dataset
from ace_lora.data.benchmarks import BENCHMARKS, BenchmarkError, benchmarks_of, load_benchmark, load_boxes
from ace_lora.data.dataset import ImageDataset, PairDataset
from data_support import RAW, cfg

EXPECTED = {  # name: (dataset, task, classes, domain, split)
    "chexpert5x200": (
        "chexpert",
        "multiclass",
        ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"],
        "chest",
        "test",
    ),
    "rsna": ("rsna", "binary", ["Normal", "Pneumonia"], "chest", "test"),
    "siim": ("siim", "binary", ["Normal", "Pneumothorax"], "chest", "test"),
    "mhist": ("mhist", "binary", ["HP", "SSA"], "histopathology", "test"),
    "lc25000_lung": ("lc25000", "multiclass", ["lung_aca", "lung_n", "lung_scc"], "histopathology", "test"),
    "lc25000_colon": ("lc25000", "binary", ["colon_aca", "colon_n"], "histopathology", "test"),
    "nih14": ("nih14", "multilabel", list(NIH_FINDINGS), "chest", "val"),
    "siim_seg": ("siim", "segmentation", ["Normal", "Pneumothorax"], "chest", "test"),
    "rsna_det": ("rsna", "detection", ["Normal", "Pneumonia"], "chest", "test"),
}


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    for name in DATASETS:
        RAW[name](base / "raw")
        prepare_dataset(name, base / "raw", base / "processed" / name, cfg(), workers=2)
    return base / "processed"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bench_registry(name):
    spec = BENCHMARKS[name]
    assert (spec.dataset, spec.task, list(spec.classes), spec.domain, spec.split) == EXPECTED[name]
    assert spec.dataset in DATASETS and name in benchmarks_of(spec.dataset)
    if spec.task == "binary":
        assert spec.positive == spec.classes[0 if name == "lc25000_colon" else 1]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bench_load_every_benchmark(processed, name):
    spec, manifest = load_benchmark(name, processed)
    assert len(manifest) > 0 and (manifest["split"] == spec.split).all()
    assert manifest.index.equals(pd.RangeIndex(len(manifest)))
    assert all((spec.root(processed) / p).is_file() for p in manifest["image"])
    if spec.task in ("binary", "multiclass"):
        assert set(manifest["label"]) <= set(spec.classes)
    if spec.task == "multilabel":
        assert manifest[list(spec.classes)].isin([0, 1]).all().all()


def test_bench_filters_and_detection(processed):
    _, lung = load_benchmark("lc25000_lung", processed)
    assert set(lung["organ"]) == {"lung"} and len(lung) == 6
    _, det = load_benchmark("rsna_det", processed, split="train")
    boxes = load_boxes(processed)
    assert (det["label"] == "Pneumonia").all() and set(det["image"]) <= set(boxes["image"])
    _, seg = load_benchmark("siim_seg", processed)
    assert "mask" in seg.columns and (seg["mask"] == "").sum() >= 0


def test_bench_errors(processed, tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'chexpert'; known: mimic, nih14, chexpert5x200, rsna"):
        load_benchmark("chexpert", processed)
    with pytest.raises(BenchmarkError, match=r"prepared data not found; run `python -m ace_lora prepare mhist`"):
        load_benchmark("mhist", tmp_path)
    with pytest.raises(BenchmarkError, match=r"no rows in split 'train'"):
        load_benchmark("chexpert5x200", processed, split="train")
    (tmp_path / "mhist").mkdir()
    pd.read_csv(processed / "mhist" / "manifest.csv").drop(columns=["label"]).to_csv(
        tmp_path / "mhist" / "manifest.csv", index=False
    )
    with pytest.raises(BenchmarkError, match=r"missing column\(s\) \['label'\] needed by benchmark mhist"):
        load_benchmark("mhist", tmp_path)


def test_dataset_image_items(processed):
    spec, manifest = load_benchmark("chexpert5x200", processed)
    data = ImageDataset(manifest, spec.root(processed), transform=None)
    item = data[3]
    assert item["index"] == 3 and item["image"].shape[0] == 3 and item["image"].dtype == torch.float32
    assert torch.equal(item["image"][0], item["image"][1])  # grayscale -> 3 equal channels
    _, hist = load_benchmark("mhist", processed)
    assert ImageDataset(hist, processed / "mhist", lambda im: torch.tensor(im.size))[0]["image"].tolist() == [16, 16]


def test_dataset_pair_items(processed):
    manifest = pd.read_csv(processed / "mimic" / "manifest.csv")
    calls = []

    def tokenize(texts):  # (ids [B, L], mask [B, L])
        calls.append(len(texts))
        ids = torch.tensor([[len(t), 7, 0, 0] for t in texts])
        return ids, (ids != 0).long()

    data = PairDataset(manifest, processed / "mimic", None, tokenize, CHEXPERT_FINDINGS)
    assert calls == [len(manifest)]  # tokenized once, up front
    item = data[0]
    assert set(item) == {"image", "input_ids", "attention_mask", "labels"}
    assert item["image"].shape[0] == 3 and item["input_ids"].shape == (4,) and item["input_ids"].dtype == torch.long
    assert item["attention_mask"].tolist() == [1, 1, 0, 0] and item["attention_mask"].dtype == torch.long
    assert item["labels"].dtype == torch.float32 and item["labels"].shape == (14,)
    edema = CHEXPERT_FINDINGS.index("Edema")
    assert data.labels[:, edema].tolist() == manifest["Edema"].astype(float).tolist()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['text'\]"):
        PairDataset(manifest.drop(columns=["text"]), processed / "mimic", None, tokenize, CHEXPERT_FINDINGS)
