"""Zero-shot classification with a fake model whose image embeddings equal the prompt embeddings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ace_lora.config import EvaluateConfig
from ace_lora.eval import common, zeroshot
from eval_fakes import FakeModel, FakeSpec, level, prompts_for
from model_support import tiny_model


def write_images(root: Path, labels: list[str], split: str = "test") -> pd.DataFrame:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, name in enumerate(labels):
        path = f"images/{split}_{i}.png"
        Image.fromarray(np.full((40, 40), level(name), np.uint8)).save(root / path)
        rows.append({"image": path, "split": split, "label": name, "patient_id": i, "study_id": i})
    return pd.DataFrame(rows)


CFG = EvaluateConfig(batch_size=4, bootstrap=50, seed=0)
CLASSES = ["atelectasis", "cardiomegaly", "edema", "effusion"]


def test_classifier_is_normalised_mean_of_prompt_embeddings():
    model = FakeModel()
    prompts = {"edema": ["edema", "cardiomegaly"], "normal": ["normal"]}
    clf = common.build_zero_shot_classifier(model, prompts, ["edema", "normal"])
    expected = F.normalize(model.encode_text(*model.tokenize(prompts["edema"])).mean(0), dim=-1)
    torch.testing.assert_close(clf[0], expected)
    torch.testing.assert_close(clf.norm(dim=1), torch.ones(2))
    tok = common.build_zero_shot_classifier(model, prompts, ["edema", "normal"], ensemble="token_average")
    torch.testing.assert_close(tok, clf)  # this fake's text_global reads node 0 only: both ensembles agree


def test_token_average_passes_averaged_nodes_through_text_global():
    model = FakeModel()
    seen = {}
    original = model.text_global

    def spy(nodes, prior, node_mask):
        seen["shape"] = tuple(nodes.shape)
        return original(nodes, prior, node_mask)

    model.text_global = spy
    common.build_zero_shot_classifier(
        model, {"edema": ["edema", "edema x", "edema y"]}, ["edema"], ensemble="token_average"
    )
    assert seen["shape"] == (1, 6, model.dim)  # one averaged sequence, not three


def test_missing_class_names_class_and_file():
    with pytest.raises(KeyError, match=r"'edema'.*prompts\.json"):
        common.build_zero_shot_classifier(
            FakeModel(), {"normal": ["normal"]}, ["normal", "edema"], source="results/prompts.json"
        )
    with pytest.raises(ValueError, match="ensemble"):
        common.build_zero_shot_classifier(FakeModel(), {"normal": ["normal"]}, ["normal"], ensemble="max")


def test_multiclass_perfect_model_scores_100_percent(tmp_path):
    labels = [c for c in CLASSES for _ in range(5)]
    manifest = write_images(tmp_path, labels)
    spec = FakeSpec("chexpert5x200", "multiclass", CLASSES)
    metrics, artifacts, _ = zeroshot.evaluate_benchmark(
        FakeModel(), spec, manifest, tmp_path, prompts_for(CLASSES), CFG, "cpu"
    )
    p = "zeroshot/chexpert5x200"
    assert metrics[f"{p}/n_images"] == 20
    assert all(type(v) in (int, float) for v in metrics.values())  # plain JSON numbers
    for name in ("accuracy", "balanced_accuracy", "auroc", "f1"):
        assert metrics[f"{p}/{name}"] == pytest.approx(1.0)
        assert metrics[f"{p}/{name}_ci_low"] <= metrics[f"{p}/{name}"] <= metrics[f"{p}/{name}_ci_high"]
    pred = artifacts["predictions"]
    assert list(pred["actual"]) == labels and list(pred["predicted"]) == labels
    np.testing.assert_allclose(pred.filter(like="prob_").sum(axis=1), 1.0)
    conf = artifacts["confusion"]
    assert len(conf) == 16 and conf["count"].sum() == 20
    assert (conf.query("actual == predicted")["count"] == 5).all()
    assert set(artifacts["roc"]["class"]) == set(CLASSES)
    # a shuffled manifest gives the same point estimates: predictions follow row order
    shuffled = manifest.sample(frac=1.0, random_state=0)
    again, art, _ = zeroshot.evaluate_benchmark(FakeModel(), spec, shuffled, tmp_path, prompts_for(CLASSES), CFG, "cpu")
    assert {k: v for k, v in again.items() if "_ci_" not in k} == {k: v for k, v in metrics.items() if "_ci_" not in k}
    assert list(art["predictions"]["actual"]) == list(shuffled["label"])


def test_binary_auroc_uses_positive_class(tmp_path):
    labels = ["normal"] * 6 + ["pneumothorax"] * 4
    manifest = write_images(tmp_path, labels)
    spec = FakeSpec("siim", "binary", ["normal", "pneumothorax"])
    metrics, artifacts, _ = zeroshot.evaluate_benchmark(
        FakeModel(), spec, manifest, tmp_path, prompts_for(spec.classes), CFG, "cpu"
    )
    assert metrics["zeroshot/siim/auroc"] == pytest.approx(1.0)
    assert metrics["zeroshot/siim/accuracy"] == pytest.approx(1.0)
    assert set(artifacts["roc"]["class"]) == {"pneumothorax"}
    # the bootstrap can be switched off: no CI keys
    metrics, _, _ = zeroshot.evaluate_benchmark(
        FakeModel(), spec, manifest, tmp_path, prompts_for(spec.classes), dataclasses.replace(CFG, bootstrap=0), "cpu"
    )
    assert "zeroshot/siim/auroc_ci_low" not in metrics


def test_multilabel_scores_each_finding_against_no_finding(tmp_path):
    findings = ["atelectasis", "edema", "effusion"]
    labels = ["atelectasis", "edema", "effusion", "No Finding"] * 3
    manifest = write_images(tmp_path, labels)
    for f in findings:
        manifest[f] = (manifest["label"] == f).astype(int)
    manifest = manifest.drop(columns="label")
    spec = FakeSpec("nih14", "multilabel", findings)
    metrics, artifacts, _ = zeroshot.evaluate_benchmark(
        FakeModel(), spec, manifest, tmp_path, prompts_for(findings + ["No Finding"]), CFG, "cpu"
    )
    assert metrics["zeroshot/nih14/auroc"] == pytest.approx(1.0)
    assert metrics["zeroshot/nih14/auroc_edema"] == pytest.approx(1.0)
    assert {"predictions", "roc"} <= set(artifacts)


def test_multilabel_with_no_finding_as_a_label(tmp_path):
    labels = ["edema", "No Finding", "effusion", "No Finding", "edema", "effusion"]
    manifest = write_images(tmp_path, labels)
    for f in ("edema", "effusion", "No Finding"):
        manifest[f] = (manifest["label"] == f).astype(int)
    spec = FakeSpec("mimic", "multilabel", ["edema", "No Finding", "effusion"])
    metrics, _, _ = zeroshot.evaluate_benchmark(
        FakeModel(), spec, manifest.drop(columns="label"), tmp_path, prompts_for(spec.classes), CFG, "cpu"
    )
    assert metrics["zeroshot/mimic/auroc_no_finding"] == pytest.approx(1.0)
    assert metrics["zeroshot/mimic/auroc"] == pytest.approx(1.0)


def test_clear_errors(tmp_path):
    spec = FakeSpec("mhist", "multiclass", ["hyperplastic polyp", "sessile serrated adenoma"])
    with pytest.raises(ValueError, match="mhist.*empty"):
        zeroshot.evaluate_benchmark(
            FakeModel(), spec, pd.DataFrame(columns=["image", "label"]), tmp_path, {}, CFG, "cpu"
        )
    manifest = write_images(tmp_path, ["normal", "edema"])
    with pytest.raises(ValueError, match="not among the benchmark classes"):
        zeroshot.evaluate_benchmark(
            FakeModel(),
            FakeSpec("x", "multiclass", ["normal"]),
            manifest,
            tmp_path,
            prompts_for(["normal"]),
            CFG,
            "cpu",
        )
    with pytest.raises(KeyError, match="'edema'"):
        zeroshot.evaluate_benchmark(
            FakeModel(),
            FakeSpec("x", "multiclass", ["normal", "edema"]),
            manifest,
            tmp_path,
            prompts_for(["normal"]),
            CFG,
            "cpu",
        )


# ------------------------------------------------------------------------------ the real tiny model


@pytest.mark.parametrize("ensemble", ["mean", "token_average"])
def test_smoke_real_tiny_model(tmp_path, ensemble):
    model = tiny_model(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(9):
        path = f"images/{i}.png"
        Image.fromarray(rng.integers(0, 255, (70, 80), dtype=np.uint8)).save(tmp_path / path)
        rows.append({"image": path, "split": "test", "label": CLASSES[i % 3]})
    spec = FakeSpec("chexpert5x200", "multiclass", CLASSES[:3])
    cfg = dataclasses.replace(CFG, ensemble=ensemble)
    metrics, artifacts, _ = zeroshot.evaluate_benchmark(
        model, spec, pd.DataFrame(rows), tmp_path, prompts_for(CLASSES[:3]), cfg, "cpu"
    )
    for name in ("accuracy", "balanced_accuracy", "auroc", "f1"):
        assert 0.0 <= metrics[f"zeroshot/chexpert5x200/{name}"] <= 1.0
    probs = artifacts["predictions"].filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    assert model.training is False


def test_precision_bf16_autocasts_on_cpu(tmp_path):
    """evaluate.precision reaches the encoders: bf16 embeddings differ from fp32 ones, by bf16 rounding only."""
    model = tiny_model(tmp_path)
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f"images/{i}.png")
        rows.append({"image": f"images/{i}.png", "split": "test", "label": CLASSES[i % 2]})
    manifest = pd.DataFrame(rows)
    images = {p: zeroshot.embed_images(model, manifest, tmp_path, 4, precision=p) for p in ("fp32", "bf16", "auto")}
    classes = {
        p: common.build_zero_shot_classifier(model, prompts_for(CLASSES[:2]), CLASSES[:2], precision=p)
        for p in ("fp32", "bf16")
    }
    assert torch.equal(images["auto"], images["fp32"])  # auto = fp32 on CPU
    for got in (images, classes):
        assert not torch.equal(got["bf16"], got["fp32"])
        assert F.cosine_similarity(got["bf16"], got["fp32"], dim=-1).min() > 0.9  # a flipped top-k costs ~0.03
