"""Zero-shot grounding with the fake model of tests/eval_fakes.py: bright regions are the finding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ace_lora.config import EvaluateConfig
from ace_lora.eval import grounding
from ace_lora.eval.metrics import dice
from ace_lora.eval.zeroshot import evaluate_benchmark
from ace_lora.plots import save_overlays
from eval_fakes import SIZE, FakeModel, FakeSpec, level, prompts_for
from model_support import tiny_model

CFG = EvaluateConfig(batch_size=4, bootstrap=50, seed=0, grounding_thresholds=20, overlays=2, dataeff_fractions=[])
CLASSES = ("Normal", "Pneumothorax")


def _region(rng) -> tuple[int, int, int, int]:
    """A patch-aligned rectangle (y0, y1, x0, x1) on the 4 x 4 grid of 8-pixel patches."""
    y0, x0 = (int(v) * 8 for v in rng.integers(0, 3, 2))
    h, w = (int(v) * 8 for v in rng.integers(1, 3, 2))
    return y0, min(SIZE, y0 + h), x0, min(SIZE, x0 + w)


def write_dataset(root: Path, n_per_split: int = 6, seed: int = 0, positive: str = "Pneumothorax") -> pd.DataFrame:
    """A prepared SIIM/RSNA-like folder: images, masks, boxes.csv and manifest.csv with train, val, test splits."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows, boxes = [], []
    for split in ("train", "val", "test"):
        for i in range(n_per_split):
            name = f"{split}_{i}"
            img = np.full((SIZE, SIZE), level("normal"), np.uint8)
            row = {
                "image": f"images/{name}.png",
                "split": split,
                "patient_id": name,
                "study_id": name,
                "orig_width": SIZE,
                "orig_height": SIZE,
                "label": "Normal",
                "mask": "",
            }
            if i % 3:
                y0, y1, x0, x1 = _region(rng)
                img[y0:y1, x0:x1] = level(positive.lower())
                mask = np.zeros((SIZE, SIZE), np.uint8)
                mask[y0:y1, x0:x1] = 255
                Image.fromarray(mask).save(root / f"masks/{name}.png")
                row.update(label=positive, mask=f"masks/{name}.png")
                boxes.append({"image": row["image"], "x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})
            Image.fromarray(img).save(root / row["image"])
            rows.append(row)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    pd.DataFrame(boxes, columns=["image", "x", "y", "width", "height"]).to_csv(root / "boxes.csv", index=False)
    return manifest


def test_helpers():
    prob = np.zeros((10, 10))
    prob[1:3, 2:5] = 0.9
    prob[6:9, 6:8] = 0.7
    boxes, scores = grounding.regions_to_boxes(prob, 0.5)
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [6, 6, 8, 9]])
    np.testing.assert_allclose(scores, [0.9, 0.7])
    assert grounding.regions_to_boxes(prob, 0.95)[0].shape == (0, 4)
    # 200 x 100 original, shortest side -> 50: scale 0.5, crop 25 px on the left
    np.testing.assert_allclose(
        grounding.boxes_to_input(np.array([[60, 10, 40, 20], [0, 0, 10, 10]]), 200, 100, 50), [[5, 5, 25, 15]]
    )
    mask = Image.fromarray(np.pad(np.ones((2, 2), np.uint8) * 255, ((0, 2), (1, 1))))  # 4 x 4, top middle
    np.testing.assert_array_equal(grounding.fit_to_input(mask, 4) > 0, np.asarray(mask) > 0)
    # the threshold curve equals Dice computed mask by mask
    rng = np.random.default_rng(0)
    p, gt = rng.random((16, 16)), rng.random((16, 16)) > 0.7
    thresholds = np.array([0.0, 0.3, 0.5, 0.9, 1.1])
    np.testing.assert_allclose(grounding._dice_curve(p, gt, thresholds), [dice(p >= t, gt) for t in thresholds])
    assert grounding._dice_curve(p, np.zeros_like(gt), np.array([1.1]))[0] == 1.0  # empty vs empty


def test_segmentation_through_evaluate_benchmark(tmp_path):
    from ace_lora.data.benchmarks import load_benchmark

    root = tmp_path / "processed" / "siim"
    write_dataset(root)
    spec, test = load_benchmark("siim_seg", tmp_path / "processed")
    cfg = dataclasses.replace(CFG, dataeff_fractions=[0.5, 1.0], dataeff_steps=100, dataeff_lr=0.1)
    metrics, artifacts, overlays = evaluate_benchmark(FakeModel(), spec, test, root, prompts_for(CLASSES), cfg, "cpu")
    p = "grounding/siim_seg"
    assert metrics[f"{p}/n_images"] == 6
    assert all(type(v) in (int, float) for v in metrics.values())  # plain JSON numbers
    assert metrics[f"{p}/dice"] > 0.8 and metrics[f"{p}/dice_positive"] > 0.7
    assert metrics[f"{p}/dice_ci_low"] <= metrics[f"{p}/dice"] <= metrics[f"{p}/dice_ci_high"]
    assert -50.0 < metrics[f"{p}/threshold"] < 50.0  # log-odds, strictly inside the fake's extremes
    assert len(artifacts["predictions"]) == 6 and len(artifacts["thresholds"]) > 2
    save_overlays(overlays, tmp_path / "overlays")  # what the evaluate stage does with them
    assert len(list((tmp_path / "overlays").glob("grounding_siim_seg_*.png"))) == 2
    assert len(overlays) == 2 * 3 and {o.kind for o in overlays} == {"segmentation"}  # 2 per protocol
    # data-efficient heads on 50 % / 100 % of the six train images learn the bright-region rule
    for protocol, n_train in (("dataeff_50pct", 3), ("dataeff_100pct", 6)):
        assert metrics[f"{protocol}/siim_seg/n_train"] == n_train
        assert metrics[f"{protocol}/siim_seg/dice"] > 0.8
        assert f"{protocol}_predictions" in artifacts
    # an uninformative direction (positive = negative prompts) does much worse
    same = {c: ["normal"] for c in CLASSES}
    worse, _, _ = evaluate_benchmark(FakeModel(), spec, test, root, same, CFG, "cpu")
    assert worse[f"{p}/dice"] < metrics[f"{p}/dice"]


def test_detection_map(tmp_path):
    from ace_lora.data.benchmarks import load_benchmark

    root = tmp_path / "processed" / "rsna"
    write_dataset(root, n_per_split=8, seed=1, positive="Pneumonia")
    spec, test = load_benchmark("rsna_det", tmp_path / "processed")
    metrics, artifacts, overlays = evaluate_benchmark(
        FakeModel(), spec, test, root, prompts_for(spec.classes), CFG, "cpu"
    )
    p = "grounding/rsna_det"
    assert metrics[f"{p}/n_images"] == 5  # positive (boxed) test images only
    assert all(type(v) in (int, float) for v in metrics.values())
    assert metrics[f"{p}/map"] > 0.5
    assert metrics[f"{p}/map_ci_low"] <= metrics[f"{p}/map"] <= metrics[f"{p}/map_ci_high"]
    assert set(artifacts["predictions"].columns) == {"image", "x1", "y1", "x2", "y2", "score"}
    assert [o.filename for o in overlays] == ["grounding_rsna_det_000.png", "grounding_rsna_det_001.png"]
    assert all(o.truth.shape[1:] == (4,) and 0 <= o.heatmap.min() <= o.heatmap.max() <= 1 for o in overlays)


def test_grounding_errors(tmp_path):
    root = tmp_path / "siim"
    manifest = write_dataset(root, n_per_split=2)
    spec = FakeSpec("siim_seg", "segmentation", list(CLASSES))
    test, val = manifest[manifest.split == "test"], manifest[manifest.split == "val"]
    with pytest.raises(ValueError, match="dataeff_fractions"):
        grounding.evaluate_grounding(
            FakeModel(),
            spec,
            test,
            root,
            prompts_for(CLASSES),
            dataclasses.replace(CFG, dataeff_fractions=[0.0]),
            "cpu",
            val_manifest=val,
        )
    with pytest.raises(ValueError, match="validation split is empty"):
        grounding.evaluate_grounding(
            FakeModel(), spec, test, root, prompts_for(CLASSES), CFG, "cpu", val_manifest=val.iloc[:0]
        )
    with pytest.raises(KeyError, match="'Pneumothorax'"):
        grounding.evaluate_grounding(
            FakeModel(), spec, test, root, prompts_for(["Normal"]), CFG, "cpu", val_manifest=val
        )
    det = FakeSpec("rsna_det", "detection", list(CLASSES))
    with pytest.raises(ValueError, match="no (test|validation) image has a box"):
        grounding.evaluate_grounding(
            FakeModel(),
            det,
            test,
            root,
            prompts_for(CLASSES),
            CFG,
            "cpu",
            val_manifest=val,
            boxes=pd.DataFrame(columns=["image", "x", "y", "width", "height"]),
        )


def test_smoke_real_tiny_model_grounding(tmp_path):
    model = tiny_model(tmp_path)
    root = tmp_path / "siim"
    manifest = write_dataset(root, n_per_split=3)
    spec = FakeSpec("siim_seg", "segmentation", list(CLASSES))
    test, val = manifest[manifest.split == "test"], manifest[manifest.split == "val"]
    metrics, artifacts, _ = grounding.evaluate_grounding(
        model, spec, test, root, prompts_for(CLASSES), CFG, "cpu", val_manifest=val
    )
    assert 0.0 <= metrics["grounding/siim_seg/dice"] <= 1.0
    assert len(artifacts["predictions"]) == 3
