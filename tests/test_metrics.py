"""Metrics against scikit-learn, pycocotools and hand-computed values."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from sklearn import metrics as skm

from ace_lora.eval.metrics import (
    DEFAULT_IOU_THRESHOLDS,
    UndefinedMetricError,
    accuracy,
    balanced_accuracy,
    bootstrap_ci,
    box_iou,
    dice,
    macro_auroc,
    macro_f1,
    mean_average_precision,
)


def _multiclass(n: int = 300, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


# ------------------------------------------------------------------------------------ classification


def test_classification_metrics_match_sklearn():
    y, p = _multiclass()
    pred = p.argmax(1)
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, pred))
    assert balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_f1(y, p) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert macro_auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    # predicted labels are accepted in place of scores
    assert accuracy(y, pred) == accuracy(y, p)


@pytest.mark.parametrize("seed", range(20))
def test_confusion_based_metrics_match_sklearn_when_classes_are_missing(seed):
    # bootstrap resamples: classes absent from the truth, from the predictions, or both
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 2, 3], size=rng.integers(3, 40))
    pred = rng.choice([0, 1, 3, 4], size=len(y))
    assert accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    with pytest.warns(UserWarning) if set(pred) - set(y) else contextlib.nullcontext():
        expected = skm.balanced_accuracy_score(y, pred)
    assert balanced_accuracy(y, pred) == pytest.approx(expected)
    assert macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))


def test_hand_computed_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9])  # one of four positive/negative pairs misordered
    assert macro_auroc(y, s) == pytest.approx(0.75)
    assert macro_auroc(y, np.stack([1 - s, s], 1)) == pytest.approx(0.75)
    pred = np.array([0, 1, 0, 1])
    assert accuracy(y, pred) == 0.5
    # recall class 0: 1/2, class 1: 1/2 -> 0.5; F1 per class 0.5
    assert balanced_accuracy(y, pred) == 0.5
    assert macro_f1(y, pred) == pytest.approx(0.5)
    # imbalanced: 3 of class 0 right, 1 of class 1 wrong
    assert balanced_accuracy(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])) == 0.5


def test_multilabel_auroc_skips_single_class_labels():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (100, 4))
    y[:, 2] = 0  # no positives: skipped
    s = rng.random((100, 4)) + 0.5 * y
    expected = np.mean([skm.roc_auc_score(y[:, c], s[:, c]) for c in (0, 1, 3)])
    assert macro_auroc(y, s) == pytest.approx(expected)
    with pytest.raises(UndefinedMetricError):
        macro_auroc(np.zeros((5, 2), int), np.zeros((5, 2)))


def test_auroc_with_ties_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    s = rng.integers(0, 4, 200).astype(float)  # heavy ties
    assert macro_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    ym = rng.integers(0, 2, (200, 3))
    sm = rng.integers(0, 3, (200, 3)).astype(float)
    assert macro_auroc(ym, sm) == pytest.approx(skm.roc_auc_score(ym, sm, average="macro"))


def test_auroc_undefined_with_one_class():
    with pytest.raises(UndefinedMetricError):
        macro_auroc(np.ones(4, int), np.random.rand(4))
    with pytest.raises(UndefinedMetricError):  # multiclass with a class absent
        macro_auroc(np.array([0, 1, 0, 1]), np.random.rand(4, 3))


@pytest.mark.parametrize("metric", [accuracy, balanced_accuracy, macro_f1, macro_auroc])
def test_bootstrap_ci_contains_estimate_and_repeats(metric):
    y, p = _multiclass(400)
    low, high = bootstrap_ci(metric, y, p, n=200, seed=3)
    assert low <= metric(y, p) <= high
    assert low < high
    assert (low, high) == bootstrap_ci(metric, y, p, n=200, seed=3)
    assert (low, high) != bootstrap_ci(metric, y, p, n=200, seed=4)


def test_bootstrap_ci_skips_undefined_resamples():
    y = np.array([0] * 19 + [1])  # many resamples miss the only positive
    s = np.linspace(0, 1, 20)
    low, high = bootstrap_ci(macro_auroc, y, s, n=100, seed=0)
    assert low == high == 1.0
    assert all(np.isnan(bootstrap_ci(macro_auroc, np.zeros(5, int), np.zeros(5), n=20)))
    assert all(np.isnan(bootstrap_ci(accuracy, y, s, n=0)))


# ---------------------------------------------------------------------------------------------- dice


def test_dice_values_and_edge_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0  # empty vs empty: convention
    b[0, :2] = True
    assert dice(a, b) == 0.0 and dice(b, a) == 0.0
    a[0, 1:3] = True  # |A|=2, |B|=2, overlap 1
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(b, b) == 1.0
    with pytest.raises(ValueError):
        dice(a, np.zeros((3, 3)))


# ----------------------------------------------------------------------------------------- detection


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0]])


def test_map_hand_values_and_edge_cases():
    gt = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])]
    # perfect detections
    assert mean_average_precision([g.copy() for g in gt], [np.array([0.9]), np.array([0.8])], gt) == 1.0
    # one hit ranked first, one false positive ranked second, second GT missed: recall 0.5 at precision 1
    preds = [np.array([[0, 0, 10, 10]]), np.array([[50, 50, 60, 60]])]
    ap = mean_average_precision(preds, [np.array([0.9]), np.array([0.8])], gt)
    assert ap == pytest.approx(51 / 101)
    # no predictions at all
    assert mean_average_precision([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, gt) == 0.0
    # no ground truth anywhere: undefined
    with pytest.raises(UndefinedMetricError):
        mean_average_precision(preds, [np.array([0.9]), np.array([0.8])], [np.zeros((0, 4))] * 2)
    # an image without ground truth contributes false positives
    gt2 = [gt[0], np.zeros((0, 4))]
    preds2 = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10]])]
    assert mean_average_precision(preds2, [np.array([0.5]), np.array([0.9])], gt2) == pytest.approx(0.5)
    # IoU 0.5 box: a hit at thresholds <= 0.5 only (0.40, 0.45, 0.50 of the eight)
    half = [np.array([[0, 0, 10, 20]]), np.array([[0, 0, 10, 20]])]
    gt3 = [np.array([[0, 0, 10, 10]])] * 2
    ap = mean_average_precision(half, [np.array([0.9]), np.array([0.8])], gt3)
    assert ap == pytest.approx(3 / 8)


def _coco_map(pred_boxes, scores, gt_boxes, thresholds):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    images, anns, dets = [], [], []
    for i, (g, p, s) in enumerate(zip(gt_boxes, pred_boxes, scores)):
        images.append({"id": i, "width": 256, "height": 256})
        for b in g:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "bbox": xywh(b),
                    "area": float((b[2] - b[0]) * (b[3] - b[1])),
                    "iscrowd": 0,
                }
            )
        for b, c in zip(p, s):
            dets.append({"image_id": i, "category_id": 1, "bbox": xywh(b), "score": float(c)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "opacity"}]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.iouThrs = np.asarray(thresholds, dtype=float)
        ev.params.maxDets = [1000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, 0]  # (T, R)
    return float(precision[precision > -1].mean())


def _random_boxes(rng, k, size=100.0):
    xy = rng.uniform(0, size * 0.7, (k, 2))
    wh = rng.uniform(5, size * 0.3, (k, 2))
    return np.concatenate([xy, xy + wh], 1)


@pytest.mark.parametrize("seed", range(4))
def test_map_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    n_images = 12
    gt, preds, scores = [], [], []
    for i in range(n_images):
        g = _random_boxes(rng, int(rng.integers(0, 4)))
        # predictions: jittered copies of some GT boxes plus random ones
        kept = g[rng.random(len(g)) < 0.7]
        shift = rng.normal(0, 3, (len(kept), 2))
        grow = np.clip(rng.normal(0, 3, (len(kept), 2)), -2, None)
        jitter = np.concatenate([kept[:, :2] + shift, kept[:, 2:] + shift + grow], 1)
        p = np.concatenate([jitter, _random_boxes(rng, int(rng.integers(0, 4)))])
        gt.append(g)
        preds.append(p)
        scores.append(rng.random(len(p)))
    assert sum(len(g) for g in gt) and sum(len(p) for p in preds), "the seeds are chosen to give boxes"
    ours = mean_average_precision(preds, scores, gt, DEFAULT_IOU_THRESHOLDS)
    assert ours == pytest.approx(_coco_map(preds, scores, gt, DEFAULT_IOU_THRESHOLDS), abs=1e-12)
    assert 0.0 < ours < 1.0
