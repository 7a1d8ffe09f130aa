"""Dense protocols: patch maps turned into masks (SIIM) and boxes (RSNA), zero-shot or with a light head.

Both protocols score every patch node with a linear map ``nodes @ w + b`` (log-odds of the positive class) and
share the post-processing and metrics below:

* ``grounding`` (zero-shot; docs/method.md#segmentation-and-detection): ``w`` from the class prompts (step 1);
* ``dataeff_<pct>pct`` (the MGCA data-efficient protocol, lightened): ``w, b`` a logistic-regression head
  trained on the frozen encoder's patch nodes against patch mask coverage (boxes filled in for detection), on a
  seeded ``pct`` % subset of the train split (:func:`train_patch_probe`).

Zero-shot grounding:

1. The image's patch nodes ``model.image_nodes(images)[0][:, 1:]`` (L2-normalised, on a square ``g x g`` grid)
   are compared with the positive and negative class embeddings (the zero-shot classifier of the benchmark's
   classes): the map holds the log-odds of the two-way softmax, ``s * patch·(t_pos - t_neg)`` with
   ``s = model.logit_scale`` (``sigmoid`` of it = ``softmax(s * [patch·t_pos, patch·t_neg])[pos]``; thresholds act
   on the log-odds, which do not saturate in float32 as the probabilities do); the ``g x g`` map is upsampled
   bilinearly to the model's input size.
2. Ground truth is brought to the same geometry as the model input (resize shortest side + centre crop).
3. A single threshold is chosen on the **validation** split among ``eval_cfg.grounding_thresholds`` candidates
   (quantiles of the validation maps, and evenly spaced values between their extremes): the one maximising
   mean Dice (segmentation) or mAP (detection); it is then applied to the test split.

Segmentation: prediction = ``map >= threshold``; Dice per image (empty-vs-empty = 1), averaged over the test
images (normal ones included) with a bootstrap CI; ``dice_positive`` averages over images with a non-empty mask.
Detection (RSNA, images with boxes only, as the 70/15/15 protocol): connected regions of ``map >= threshold``
(``scipy.ndimage.label``, 8-connectivity) -> their bounding boxes, scored by the mean log-odds inside the region
-> COCO-style mAP over IoU 0.40:0.05:0.75.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader

from ace_lora.config import EvaluateConfig
from ace_lora.distributed import autocast
from ace_lora.eval import metrics as M
from ace_lora.eval.common import (
    EvalModel,
    Evaluation,
    Overlay,
    build_zero_shot_classifier,
    eval_mode,
    image_dataset,
    logit_scale,
    model_device,
    positive_index,
)
from ace_lora.progress import progress
from ace_lora.registry import Benchmark

__all__ = [
    "patch_features",
    "upsample_map",
    "fit_to_input",
    "boxes_to_input",
    "regions_to_boxes",
    "choose_threshold_dice",
    "train_patch_probe",
    "evaluate_grounding",
]


# -------------------------------------------------------------------------------------------- the maps


def upsample_map(grid: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """Bilinear upsampling of a ``(g, g)`` map to ``(size, size)``."""
    grid = torch.as_tensor(np.asarray(grid, dtype=np.float32))
    return F.interpolate(grid[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def fit_to_input(img: Image.Image, size: int, resample=Image.Resampling.NEAREST) -> np.ndarray:
    """Resize the shortest side to ``size`` and centre-crop ``size x size`` (the eval transform's geometry)."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    img = img.resize(new, resample)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def boxes_to_input(boxes: np.ndarray, orig_width: float, orig_height: float, size: int) -> np.ndarray:
    """``(x, y, width, height)`` boxes in original pixels -> ``(x1, y1, x2, y2)`` in the ``size`` input geometry
    (shortest side scaled to ``size``, centre crop); clipped to the crop, empty boxes dropped."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    scale = size / min(orig_width, orig_height)
    dx, dy = (orig_width * scale - size) / 2, (orig_height * scale - size) / 2
    out = np.stack(
        [
            boxes[:, 0] * scale - dx,
            boxes[:, 1] * scale - dy,
            (boxes[:, 0] + boxes[:, 2]) * scale - dx,
            (boxes[:, 1] + boxes[:, 3]) * scale - dy,
        ],
        1,
    )
    out = np.clip(out, 0, size)
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def regions_to_boxes(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of ``prob >= threshold`` -> boxes ``(k, 4)`` as ``(x1, y1, x2, y2)`` (pixel edges) and
    scores ``(k,)`` = mean map value inside each region."""
    labels, n = ndimage.label(prob >= threshold, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0)
    slices = ndimage.find_objects(labels)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=float)
    scores = np.asarray(ndimage.mean(prob, labels, index=np.arange(1, n + 1)), dtype=float)
    return boxes, scores


@torch.inference_mode()
def patch_features(
    model: EvalModel,
    manifest: pd.DataFrame,
    root: str | Path,
    eval_cfg: EvaluateConfig,
    device: torch.device | str | None = None,
    desc: str = "patches",
) -> torch.Tensor:
    """Patch nodes ``(N, g, g, D)`` (float16, CPU) of every manifest row, in row order (frozen encoder)."""
    device = model_device(model, device)
    dataset = image_dataset(manifest.reset_index(drop=True), Path(root), model.image_transform(False))
    loader = DataLoader(
        dataset,
        batch_size=eval_cfg.batch_size,
        shuffle=False,
        num_workers=eval_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    out: torch.Tensor | None = None
    with eval_mode(model), autocast(device, eval_cfg.precision):
        for batch in progress(loader, desc, unit="batch"):
            nodes, _ = model.image_nodes(batch["image"].to(device, non_blocking=True))
            patches = nodes[:, 1:].float()  # (B, P, D)
            side = math.isqrt(patches.shape[1])
            if side * side != patches.shape[1]:
                raise ValueError(f"image_nodes returned {patches.shape[1]} patch nodes: not a square grid")
            if out is None:
                out = torch.zeros(len(dataset), side, side, patches.shape[2], dtype=torch.float16)
            out[torch.as_tensor(batch["index"]).long()] = patches.reshape(-1, side, side, patches.shape[2]).to(
                "cpu", torch.float16
            )
    return out


@dataclass
class _Head:
    """A linear map over patch nodes: ``map = nodes @ weight + bias`` (log-odds of the positive class)."""

    weight: torch.Tensor  # (D,)
    bias: float
    protocol: str

    def maps(self, features: torch.Tensor, chunk: int = 256) -> np.ndarray:
        """``(N, g, g)`` maps of cached features ``(N, g, g, D)``."""
        w = self.weight.float().cpu()
        parts = [features[i : i + chunk].float() @ w + self.bias for i in range(0, len(features), chunk)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 0, 0), np.float32)


def _candidate_thresholds(grids: np.ndarray, k: int) -> np.ndarray:
    """About ``k`` thresholds: half quantiles of the map values, half evenly spaced between their extremes
    (quantiles alone collapse onto a few values when the maps are nearly binary)."""
    values = grids.reshape(-1)
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, (k + 1) // 2))
    spaced = np.linspace(values.min(), values.max(), k // 2 + 2)[1:-1]
    candidates = np.unique(np.concatenate([quantiles, spaced]))
    return np.append(candidates, np.nextafter(values.max(), np.inf))  # last one: predict nothing


# ---------------------------------------------------------------------------------------- segmentation


def _dice_curve(prob: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Dice of ``prob >= t`` against ``gt`` for every ``t`` at once (sorted counts instead of K masks)."""
    flat = np.sort(prob.reshape(-1))
    inside = np.sort(prob[gt.astype(bool)])
    pred = flat.size - np.searchsorted(flat, thresholds, side="left")
    inter = inside.size - np.searchsorted(inside, thresholds, side="left")
    total = pred + inside.size
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def choose_threshold_dice(
    probs: list[np.ndarray], masks: list[np.ndarray], thresholds: np.ndarray
) -> tuple[float, np.ndarray]:
    """(threshold maximising mean Dice, mean Dice per candidate threshold)."""
    curve = np.mean([_dice_curve(p, m, thresholds) for p, m in zip(probs, masks)], axis=0)
    return float(thresholds[int(np.argmax(curve))]), curve


def _masks(manifest: pd.DataFrame, root: Path, size: int) -> list[np.ndarray]:
    out = []
    for rel in manifest["mask"].fillna("").astype(str):
        if rel.strip():
            with Image.open(root / rel) as img:
                out.append(fit_to_input(img.convert("L"), size) > 127)
        else:
            out.append(np.zeros((size, size), dtype=bool))
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _overlay(
    kind: str,
    spec,
    head: _Head,
    i: int,
    root: Path,
    rel: str,
    prob: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    size: int,
    caption: str,
) -> Overlay:
    """The figure data of test image ``i`` (grey image in the input geometry, sigmoid heatmap)."""
    with Image.open(root / rel) as img:
        image = fit_to_input(img.convert("L"), size, Image.Resampling.BICUBIC)
    return Overlay(
        kind,
        filename=f"{head.protocol}_{spec.name}_{i:03d}.png",
        title=f"{spec.name} test #{i}, {head.protocol}: {caption}",
        image=image,
        heatmap=_sigmoid(prob),
        prediction=prediction,
        truth=truth,
    )


def _evaluate_segmentation(
    spec, head: _Head, val_maps, val_masks, test_maps, test, test_masks, root, eval_cfg, size
) -> Evaluation:
    prefix = f"{head.protocol}/{spec.name}"
    thresholds = _candidate_thresholds(val_maps, eval_cfg.grounding_thresholds)
    threshold, curve = choose_threshold_dice([upsample_map(g, size) for g in val_maps], val_masks, thresholds)
    rows, overlays = [], []
    for i, (grid, gt) in enumerate(zip(test_maps, test_masks)):
        prob = upsample_map(grid, size)
        pred = prob >= threshold
        rows.append(
            {
                "image": test["image"].iloc[i],
                "dice": M.dice(pred, gt),
                "gt_pixels": int(gt.sum()),
                "pred_pixels": int(pred.sum()),
            }
        )
        if i < eval_cfg.overlays:
            overlays.append(
                _overlay(
                    "segmentation",
                    spec,
                    head,
                    i,
                    root,
                    test["image"].iloc[i],
                    prob,
                    pred,
                    gt,
                    size,
                    f"Dice {rows[-1]['dice']:.2f}",
                )
            )
    per_image = pd.DataFrame(rows)
    dices = per_image["dice"].to_numpy()
    out = {
        f"{prefix}/n_images": int(len(dices)),
        f"{prefix}/threshold": threshold,
        f"{prefix}/val_dice": float(curve.max()),
        f"{prefix}/dice": float(dices.mean()),
    }
    low, high = M.bootstrap_ci(lambda _, v: float(np.mean(v)), dices, dices, n=eval_cfg.bootstrap, seed=eval_cfg.seed)
    if not np.isnan(low):
        out[f"{prefix}/dice_ci_low"], out[f"{prefix}/dice_ci_high"] = low, high
    positive = per_image["gt_pixels"].to_numpy() > 0
    if positive.any():
        out[f"{prefix}/dice_positive"] = float(dices[positive].mean())
    curve_frame = pd.DataFrame({"threshold": thresholds, "val_dice": curve})
    return Evaluation(out, {"predictions": per_image, "thresholds": curve_frame}, overlays)


# ------------------------------------------------------------------------------------------- detection


def _gt_boxes(manifest: pd.DataFrame, boxes: pd.DataFrame, size: int) -> list[np.ndarray]:
    grouped = {k: g[["x", "y", "width", "height"]].to_numpy(float) for k, g in boxes.groupby("image")}
    out = []
    for rec in manifest.itertuples(index=False):
        raw = grouped.get(rec.image, np.zeros((0, 4)))
        out.append(boxes_to_input(raw, float(rec.orig_width), float(rec.orig_height), size))
    return out


def _detections(probs: list[np.ndarray], threshold: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [regions_to_boxes(p, threshold) for p in probs]
    return [b for b, _ in pairs], [s for _, s in pairs]


def _load_boxes(spec, root: Path) -> pd.DataFrame:
    from ace_lora.data.benchmarks import load_boxes

    return load_boxes(root.parent, spec.dataset)


def _with_boxes(frame: pd.DataFrame, boxes: pd.DataFrame, spec, split: str) -> pd.DataFrame:
    missing = [c for c in ("orig_width", "orig_height") if c not in frame.columns]
    if missing:
        raise ValueError(f"{spec.name}: manifest lacks column(s) {missing} needed to place the boxes")
    kept = frame[frame["image"].isin(set(boxes["image"]))].reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"{spec.name}: no {split} image has a box in boxes.csv (detection uses positive images)")
    return kept


def _evaluate_detection(
    spec, head: _Head, val_maps, val_gt, test_maps, test, test_gt, root, eval_cfg, size
) -> Evaluation:
    prefix = f"{head.protocol}/{spec.name}"
    probs_val = [upsample_map(g, size) for g in val_maps]
    thresholds = _candidate_thresholds(val_maps, eval_cfg.grounding_thresholds)[:-1]
    curve = np.array(
        [
            M.mean_average_precision(*_detections(probs_val, t), val_gt)
            for t in progress(thresholds, f"{spec.name} thresholds", unit="threshold")
        ]
    )
    threshold = float(thresholds[int(np.argmax(curve))])

    probs = [upsample_map(g, size) for g in test_maps]
    pred_boxes, scores = _detections(probs, threshold)
    parts = M.match_detections(pred_boxes, scores, test_gt)
    out = {
        f"{prefix}/n_images": int(len(test)),
        f"{prefix}/threshold": threshold,
        f"{prefix}/val_map": float(curve.max()),
        f"{prefix}/map": M.map_from_matches(parts),
    }
    # bootstrap over images: resample image indices, re-rank the already matched detections
    index = np.arange(len(test))
    low, high = M.bootstrap_ci(
        lambda _, idx: M.map_from_matches([parts[i] for i in idx]),
        index,
        index,
        n=eval_cfg.bootstrap,
        seed=eval_cfg.seed,
    )
    if not np.isnan(low):
        out[f"{prefix}/map_ci_low"], out[f"{prefix}/map_ci_high"] = low, high

    rows = [
        {"image": test["image"].iloc[i], "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "score": s}
        for i in range(len(test))
        for b, s in zip(pred_boxes[i], scores[i])
    ]
    predictions = pd.DataFrame(rows, columns=["image", "x1", "y1", "x2", "y2", "score"])
    overlays = [
        _overlay(
            "detection",
            spec,
            head,
            i,
            root,
            test["image"].iloc[i],
            probs[i],
            pred_boxes[i],
            test_gt[i],
            size,
            f"{len(pred_boxes[i])} boxes",
        )
        for i in range(min(eval_cfg.overlays, len(test)))
    ]
    curve_frame = pd.DataFrame({"threshold": thresholds, "val_map": curve})
    return Evaluation(out, {"predictions": predictions, "thresholds": curve_frame}, overlays)


# ------------------------------------------------------------------------------------- data-efficient


def _grid_targets(masks: list[np.ndarray], side: int) -> torch.Tensor:
    """Fraction of each patch covered by the mask, ``(N, side, side)``."""
    if not masks:
        return torch.zeros(0, side, side)
    stack = torch.as_tensor(np.stack(masks).astype(np.float32))[:, None]
    return F.adaptive_avg_pool2d(stack, side)[:, 0]


def _box_masks(boxes: list[np.ndarray], size: int) -> list[np.ndarray]:
    out = []
    for image_boxes in boxes:
        mask = np.zeros((size, size), dtype=bool)
        for x1, y1, x2, y2 in image_boxes:
            mask[int(np.floor(y1)) : int(np.ceil(y2)), int(np.floor(x1)) : int(np.ceil(x2))] = True
        out.append(mask)
    return out


def train_patch_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 300,
    lr: float = 1e-2,
    seed: int = 0,
    batch_patches: int = 65536,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, float]:
    """Logistic regression from patch nodes ``(N, g, g, D)`` to patch coverage ``(N, g, g)`` (soft BCE targets).

    The light dense head of the data-efficient protocol: one linear layer on the frozen encoder's patch nodes,
    trained with AdamW on random minibatches of patches. Returns ``(weight (D,), bias)``.
    """
    device = torch.device(device)
    x = features.reshape(-1, features.shape[-1]).to(device)  # float16 on accelerators
    if device.type == "cpu":
        x = x.float()  # once, not per step
    y = targets.reshape(-1).float().to(device)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 1).to(device)
    with torch.no_grad():
        head.weight.zero_()
        prior = float(y.mean().clamp(1e-4, 1 - 1e-4))
        head.bias.fill_(math.log(prior / (1 - prior)))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_patches, len(x)),), generator=gen).to(device)
        logits = head(x[idx].float())[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.weight.detach()[0].cpu(), float(head.bias.detach().cpu())


def _fraction_name(fraction: float) -> str:
    return f"dataeff_{fraction * 100:g}pct"


def _subset(n: int, fraction: float, seed: int) -> np.ndarray:
    k = max(1, int(round(fraction * n)))
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


# ---------------------------------------------------------------------------------------------- entry


def _rows(spec, root: Path, split: str, given: pd.DataFrame | None, use: str) -> pd.DataFrame:
    """The ``split`` rows of the benchmark (``given``, else read from ``root.parent``), renumbered; not empty."""
    if given is None:
        from ace_lora.data.benchmarks import load_benchmark

        _, given = load_benchmark(spec.name, root.parent, split=split)
    if len(given) == 0:
        raise ValueError(f"{spec.name}: the {'validation' if split == 'val' else split} split is empty; {use}")
    return given.reset_index(drop=True)


def _zero_shot_head(
    model: EvalModel,
    spec,
    prompts: dict[str, list[str]],
    eval_cfg: EvaluateConfig,
    device: torch.device,
    source: str | None,
) -> _Head:
    """Step 1 of the module docstring: ``s * (t_pos - t_neg)``, the log-odds direction of the class prompts."""
    if len(spec.classes) != 2:
        raise ValueError(f"{spec.name}: grounding needs a negative and a positive class, got {list(spec.classes)}")
    pos = positive_index(spec)
    classifier = (
        build_zero_shot_classifier(
            model,
            prompts,
            [spec.classes[1 - pos], spec.classes[pos]],
            eval_cfg.ensemble,
            device=device,
            source=source,
            precision=eval_cfg.precision,
        )
        .float()
        .cpu()
    )
    return _Head(logit_scale(model) * (classifier[1] - classifier[0]), 0.0, "grounding")


def _dataeff_fractions(eval_cfg: EvaluateConfig) -> list[float]:
    fractions = list(eval_cfg.dataeff_fractions)
    bad = [f for f in fractions if not isinstance(f, (int, float)) or not 0 < f <= 1]
    if bad:
        raise ValueError(f"evaluate.dataeff_fractions: {bad} not in (0, 1]")
    return fractions


def _ground_truth(
    spec, splits: dict[str, pd.DataFrame], root: Path, size: int, boxes: pd.DataFrame | None
) -> tuple[dict[str, pd.DataFrame], dict[str, list[np.ndarray]]]:
    """(the evaluated rows of each split, their masks or boxes in the input geometry); detection keeps the images
    with a box."""
    truth: dict[str, list[np.ndarray]] = {}
    if spec.task == "segmentation":
        for name, frame in splits.items():
            if "mask" not in frame.columns:
                raise ValueError(f"{spec.name}: the {name} manifest has no 'mask' column")
            truth[name] = _masks(frame, root, size)
        return splits, truth
    boxes = _load_boxes(spec, root) if boxes is None else boxes
    kept = {}
    for name, frame in splits.items():
        kept[name] = _with_boxes(frame, boxes, spec, {"val": "validation"}.get(name, name))
        truth[name] = _gt_boxes(kept[name], boxes, size)
    return kept, truth


def _dataeff_heads(
    spec,
    features: torch.Tensor,
    truth: list[np.ndarray],
    fractions: list[float],
    size: int,
    eval_cfg: EvaluateConfig,
    device: torch.device,
) -> tuple[list[_Head], dict[str, float]]:
    """A linear patch head per fraction of the train split (its patch nodes ``features`` and masks or boxes
    ``truth``), and the ``n_train`` metric of each."""
    masks = truth if spec.task == "segmentation" else _box_masks(truth, size)
    targets = _grid_targets(masks, features.shape[1])
    heads, n_train = [], {}
    for fraction in fractions:
        idx = torch.as_tensor(_subset(len(targets), fraction, eval_cfg.seed))
        weight, bias = train_patch_probe(
            features[idx],
            targets[idx],
            steps=eval_cfg.dataeff_steps,
            lr=eval_cfg.dataeff_lr,
            seed=eval_cfg.seed,
            device=device,
        )
        heads.append(_Head(weight, bias, _fraction_name(fraction)))
        n_train[f"{_fraction_name(fraction)}/{spec.name}/n_train"] = int(len(idx))
    return heads, n_train


def evaluate_grounding(
    model: EvalModel,
    spec: Benchmark,
    manifest: pd.DataFrame,
    root: str | Path,
    prompts: dict[str, list[str]],
    eval_cfg: EvaluateConfig,
    device: torch.device | str | None = None,
    *,
    source: str | None = None,
    val_manifest: pd.DataFrame | None = None,
    train_manifest: pd.DataFrame | None = None,
    boxes: pd.DataFrame | None = None,
) -> Evaluation:
    """Dense evaluation of a ``segmentation`` or ``detection`` benchmark (see the module docstring).

    Protocols: ``grounding`` (zero-shot, always) and, for each fraction in ``eval_cfg.dataeff_fractions``,
    ``dataeff_<pct>pct`` (a linear patch head trained on that seeded fraction of the train split, frozen encoder).
    ``manifest``: the test rows; ``val_manifest`` / ``train_manifest``: default
    ``load_benchmark(spec.name, root.parent, split=...)``; ``boxes`` (detection): ``boxes.csv`` rows (default:
    read from the prepared data set). Metrics: ``<protocol>/<benchmark>/{dice,dice_ci_low,dice_ci_high,
    dice_positive,threshold,val_dice,n_images}`` or ``.../{map,map_ci_low,map_ci_high,threshold,val_map,n_images}``,
    plus ``dataeff_<pct>pct/<benchmark>/n_train``. Tables: ``predictions`` and ``thresholds`` (grounding), prefixed
    with the protocol for the data-efficient heads. Overlays: the first ``eval_cfg.overlays`` test images of every
    protocol, named ``<protocol>_<benchmark>_<i:03d>.png``.
    """
    root = Path(root)
    device = model_device(model, device)
    if spec.task not in ("segmentation", "detection"):
        raise ValueError(f"{spec.name}: grounding needs a segmentation or detection task, got {spec.task!r}")
    if manifest is None or len(manifest) == 0:
        raise ValueError(f"{spec.name}: the test split is empty (data under {root})")
    splits = {
        "test": manifest.reset_index(drop=True),
        "val": _rows(spec, root, "val", val_manifest, "the grounding threshold is chosen on it"),
    }
    heads = [_zero_shot_head(model, spec, prompts, eval_cfg, device, source)]
    size = int(model.preset.image_size)
    fractions = _dataeff_fractions(eval_cfg)
    if fractions:
        splits["train"] = _rows(spec, root, "train", train_manifest, "the data-efficient heads are trained on it")
    splits, truth = _ground_truth(spec, splits, root, size, boxes)
    features = {
        name: patch_features(model, frame, root, eval_cfg, device, f"{spec.name} {name}")
        for name, frame in splits.items()
    }
    n_train: dict[str, float] = {}
    if fractions:
        more, n_train = _dataeff_heads(spec, features["train"], truth["train"], fractions, size, eval_cfg, device)
        heads += more

    evaluate = _evaluate_segmentation if spec.task == "segmentation" else _evaluate_detection
    result = Evaluation({}, {}, [])
    for head in heads:
        values, tables, overlays = evaluate(
            spec,
            head,
            head.maps(features["val"]),
            truth["val"],
            head.maps(features["test"]),
            splits["test"],
            truth["test"],
            root,
            eval_cfg,
            size,
        )
        result.metrics.update(values)
        prefix = "" if head.protocol == "grounding" else f"{head.protocol}_"
        result.tables.update({f"{prefix}{kind}": frame for kind, frame in tables.items()})
        result.overlays.extend(overlays)
    result.metrics.update(n_train)
    return result
