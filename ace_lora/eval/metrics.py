"""Evaluation metrics: pure functions over numpy arrays.

Conventions shared by the classification metrics: ``y_true`` holds integer class indices ``(N,)`` (or a 0/1
matrix ``(N, C)`` for multi-label AUROC); ``scores`` holds either predicted class indices ``(N,)`` or per-class
scores ``(N, C)`` (argmax = prediction). So every metric has the signature ``metric(y_true, scores)`` and can be
passed to :func:`bootstrap_ci` as is.

A metric that is undefined for the given data (AUROC with a single class present, AP without ground truth, ...)
raises :class:`UndefinedMetricError`; :func:`bootstrap_ci` skips such resamples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "UndefinedMetricError",
    "accuracy",
    "balanced_accuracy",
    "macro_auroc",
    "macro_f1",
    "bootstrap_ci",
    "dice",
    "box_iou",
    "average_precision_at",
    "mean_average_precision",
    "match_detections",
    "map_from_matches",
    "DEFAULT_IOU_THRESHOLDS",
]

#: IoU thresholds of the detection protocol (0.40, 0.45, ..., 0.75), as in the MGCA RSNA protocol.
DEFAULT_IOU_THRESHOLDS = np.arange(0.4, 0.76, 0.05)


class UndefinedMetricError(ValueError):
    """The metric has no value for this data (e.g. AUROC when only one class is present)."""


# ------------------------------------------------------------------------------------ classification


def _predictions(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    return scores.argmax(axis=1) if scores.ndim == 2 else scores.astype(int)


def _confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) over classes 0..max label seen."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    n = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


# The three metrics below equal scikit-learn's accuracy_score, balanced_accuracy_score and
# f1_score(average="macro", zero_division=0) (tested); they are computed from the confusion matrix because the
# bootstrap calls them thousands of times and scikit-learn's input validation dominated evaluation time.


def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(np.asarray(y_true) == _predictions(scores)))


def balanced_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    cm = _confusion(y_true, _predictions(scores))
    support = cm.sum(1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in ``y_true`` or in the predictions."""
    cm = _confusion(y_true, _predictions(scores))
    tp = np.diag(cm)
    denominator = cm.sum(0) + cm.sum(1)  # 2tp + fp + fn
    present = denominator > 0
    return float(np.mean(2 * tp[present] / denominator[present]))


def _rank_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC per column of ``y, s`` ``(N, C)`` as the Mann-Whitney statistic (ties count 1/2), which equals
    ``sklearn.metrics.roc_auc_score``; ~100x faster, which matters inside the bootstrap."""
    ranks = rankdata(s, axis=0)  # average ranks for ties
    n_pos = y.sum(0)
    n_neg = len(y) - n_pos
    return ((ranks * y).sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    if y.min() == y.max():
        raise UndefinedMetricError("AUROC is undefined when only one class is present")
    return float(_rank_auc(y.astype(float)[:, None], np.asarray(s, dtype=float)[:, None])[0])


def macro_auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve.

    * binary: ``y_true`` in {0, 1}, ``scores`` either ``(N,)`` positive-class scores or ``(N, 2)`` (column 1 is used);
    * multiclass: ``y_true`` class indices, ``scores (N, C)``: one-vs-rest AUROC per class, unweighted mean
      (equals ``sklearn.metrics.roc_auc_score(..., multi_class="ovr", average="macro")``); every class must have
      positives and negatives, else :class:`UndefinedMetricError`;
    * multi-label: ``y_true (N, C)`` 0/1 matrix, ``scores (N, C)``: mean over the labels that have both
      positives and negatives (labels lacking one are skipped; none left -> :class:`UndefinedMetricError`).
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    if y_true.ndim == 2:
        if scores.shape != y_true.shape:
            raise ValueError(f"multi-label AUROC: scores {scores.shape} do not match labels {y_true.shape}")
        keep = [c for c in range(y_true.shape[1]) if 0 < y_true[:, c].sum() < len(y_true)]
        if not keep:
            raise UndefinedMetricError("multi-label AUROC: no label has both positives and negatives")
        return float(np.mean(_rank_auc(y_true[:, keep].astype(float), scores[:, keep])))
    if scores.ndim == 1:
        return _binary_auc(y_true, scores)
    if scores.shape[1] == 2:
        return _binary_auc(y_true, scores[:, 1])
    onehot = (y_true[:, None] == np.arange(scores.shape[1])[None, :]).astype(float)
    if (onehot.sum(0) == 0).any() or (onehot.sum(0) == len(y_true)).any():
        raise UndefinedMetricError("multiclass AUROC is undefined when a class has no positives or no negatives")
    return float(np.mean(_rank_auc(onehot, scores)))


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    scores: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval ``(low, high)`` at level ``1 - alpha``.

    Cases (rows of ``y_true`` and ``scores``) are resampled with replacement ``n`` times with a
    ``numpy.random.default_rng(seed)`` generator, so the interval repeats for a seed. Resamples on which the metric
    is undefined (:class:`UndefinedMetricError`, or NaN) are skipped; with no usable resample (or ``n == 0``)
    the interval is ``(nan, nan)``.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) != len(scores):
        raise ValueError(f"bootstrap_ci: {len(y_true)} labels but {len(scores)} score rows")
    if n <= 0 or len(y_true) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(y_true), len(y_true))
        try:
            value = metric_fn(y_true[idx], scores[idx])
        except UndefinedMetricError:
            continue
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------- segmentation


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2|P∩T| / (|P| + |T|)`` of two binary masks of the same shape.

    Convention: two empty masks agree perfectly, Dice = 1 (an image without the finding, correctly left empty);
    an empty prediction against a non-empty target (or vice versa) scores 0.
    """
    pred = np.asarray(pred).astype(bool)
    target = np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"dice: prediction shape {pred.shape} differs from target shape {target.shape}")
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, target).sum() / total)


# ------------------------------------------------------------------------------------------- detection


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of boxes given as ``(x1, y1, x2, y2)`` in continuous coordinates."""
    a = np.asarray(a, dtype=float).reshape(-1, 4)
    b = np.asarray(b, dtype=float).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(ious: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching of score-sorted detections (rows) to ground truth (columns); True = true positive.

    Each detection takes the unmatched ground-truth box of highest IoU, provided IoU >= threshold.
    """
    matched_gt = np.zeros(ious.shape[1], dtype=bool)
    tp = np.zeros(ious.shape[0], dtype=bool)
    for d in range(ious.shape[0]):
        candidates = np.where(~matched_gt, ious[d], -1.0)
        if candidates.size == 0:
            continue
        g = int(candidates.argmax())
        if candidates[g] >= threshold:
            matched_gt[g] = True
            tp[d] = True
    return tp


def _interpolated_ap(tp_sorted: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP from detections sorted by descending score (COCO's definition)."""
    if len(tp_sorted) == 0:
        return 0.0
    tps = np.cumsum(tp_sorted)
    fps = np.cumsum(~tp_sorted)
    recall = tps / n_gt
    precision = tps / (tps + fps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    recall_points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, recall_points, side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def average_precision_at(
    pred_boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray], iou_threshold: float
) -> float:
    """Single-class COCO-style AP at one IoU threshold; see :func:`mean_average_precision`."""
    return mean_average_precision(pred_boxes, scores, gt_boxes, [iou_threshold])


def match_detections(
    pred_boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> list[tuple]:
    """Per image: ``(scores sorted descending (k,), true-positive flags (k, T), number of GT boxes)``.

    Matching never crosses images, so a bootstrap over images can reuse these parts
    (:func:`map_from_matches`) instead of matching again.
    """
    if not (len(pred_boxes) == len(scores) == len(gt_boxes)):
        raise ValueError(
            f"mean_average_precision: {len(pred_boxes)} prediction lists, {len(scores)} score lists "
            f"and {len(gt_boxes)} ground-truth lists must have one entry per image"
        )
    parts = []
    for boxes, conf, gt in zip(pred_boxes, scores, gt_boxes):
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        conf = np.asarray(conf, dtype=float).reshape(-1)
        gt = np.asarray(gt, dtype=float).reshape(-1, 4)
        if len(boxes) != len(conf):
            raise ValueError(f"mean_average_precision: {len(boxes)} boxes but {len(conf)} scores in one image")
        order = np.argsort(-conf, kind="mergesort")
        ious = box_iou(boxes[order], gt)
        tp = (
            np.stack([_match_image(ious, t) for t in iou_thresholds], 1)
            if len(iou_thresholds)
            else np.zeros((len(boxes), 0), bool)
        )
        parts.append((conf[order], tp.reshape(len(boxes), len(iou_thresholds)), len(gt)))
    return parts


def map_from_matches(parts: Sequence[tuple]) -> float:
    """mAP from :func:`match_detections` parts (images in the given order, repeats allowed)."""
    n_gt = sum(p[2] for p in parts)
    if n_gt == 0:
        raise UndefinedMetricError("mean_average_precision: no ground-truth boxes")
    n_thr = parts[0][1].shape[1]
    conf = np.concatenate([p[0] for p in parts])
    tp = np.concatenate([p[1] for p in parts]).reshape(-1, n_thr)
    ranking = np.argsort(-conf, kind="mergesort")
    return float(np.mean([_interpolated_ap(tp[ranking, t], n_gt) for t in range(n_thr)]))


def mean_average_precision(
    pred_boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> float:
    """COCO-style mean average precision for one class, averaged over IoU thresholds.

    Inputs are per image: ``pred_boxes[i]`` ``(k_i, 4)`` and ``scores[i]`` ``(k_i,)`` for the predictions,
    ``gt_boxes[i]`` ``(m_i, 4)`` for the ground truth, boxes as ``(x1, y1, x2, y2)``. Per image, detections are
    matched greedily in descending score order to the unmatched ground-truth box of highest IoU (IoU >= threshold);
    detections of all images are then ranked by score and AP is the 101-point interpolated precision (COCO, as in
    ``pycocotools`` with every detection kept, no crowd boxes, all areas).

    Edge cases: no predictions at all -> 0.0 (every ground-truth box is missed); no ground-truth box in any image
    -> :class:`UndefinedMetricError` (recall is undefined; COCO reports -1). Images without ground truth still
    contribute their predictions as false positives.
    """
    return map_from_matches(match_detections(pred_boxes, scores, gt_boxes, iou_thresholds))
