"""Zero-shot classification and ``evaluate_benchmark``, the one evaluation entry point, branching on the task.

Classification (``multiclass`` / ``binary``): images and class prompts are embedded (the class prompts by
:func:`ace_lora.eval.common.build_zero_shot_classifier`), logits are
``model.logit_scale * image_emb @ classifier.T`` (the learned scale, linear space) and softmax gives the class
probabilities. ``multilabel`` (the NIH ChestX-ray14 validation set) scores every finding on its own, positive prompt
against the negative class (see :func:`evaluate_benchmark`). ``segmentation`` / ``detection`` go to the zero-shot
grounding protocol in :mod:`ace_lora.eval.grounding`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from ace_lora.config import EvaluateConfig
from ace_lora.distributed import autocast
from ace_lora.eval import metrics as M
from ace_lora.eval.common import (
    EvalModel,
    Evaluation,
    build_zero_shot_classifier,
    eval_mode,
    image_dataset,
    logit_scale,
    model_device,
    positive_index,
)
from ace_lora.eval.grounding import evaluate_grounding
from ace_lora.progress import progress
from ace_lora.registry import Benchmark

__all__ = ["embed_images", "evaluate_benchmark", "NEGATIVE_CLASS", "CLASSIFICATION_METRICS"]

#: The negative class of the multi-label protocol: each finding's prompts are scored against this class's prompts.
NEGATIVE_CLASS = "No Finding"

#: Metric name -> function, reported with a bootstrap CI for single-label benchmarks.
CLASSIFICATION_METRICS = {
    "accuracy": M.accuracy,
    "balanced_accuracy": M.balanced_accuracy,
    "auroc": M.macro_auroc,
    "f1": M.macro_f1,
}


# ---------------------------------------------------------------------------------------------- helpers


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


# --------------------------------------------------------------------------------------------- images


@torch.inference_mode()
def embed_images(
    model: EvalModel,
    manifest: pd.DataFrame,
    root: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    desc: str = "images",
    precision: str = "auto",
) -> torch.Tensor:
    """Global image embeddings ``(N, D)`` (float32, CPU, L2-normalised) in manifest row order."""
    device = model_device(model, device)
    dataset = image_dataset(manifest.reset_index(drop=True), Path(root), model.image_transform(False))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    out = torch.zeros(len(dataset), 0)
    with eval_mode(model), autocast(device, precision):
        for batch in progress(loader, desc, unit="batch"):
            emb = F.normalize(model.encode_image(batch["image"].to(device, non_blocking=True)).float(), dim=-1)
            if out.shape[1] == 0:
                out = torch.zeros(len(dataset), emb.shape[1])
            out[torch.as_tensor(batch["index"]).long()] = emb.cpu()
    return out


# ----------------------------------------------------------------------------------------- evaluation


def _check_manifest(spec: Benchmark, manifest: pd.DataFrame, root: Path) -> None:
    if manifest is None or len(manifest) == 0:
        raise ValueError(
            f"{spec.name}: the evaluated split is empty (no manifest rows for data under {root}); "
            f"run `python -m ace_lora prepare` for its data set"
        )


def _with_ci(out: dict, prefix: str, name: str, fn, y, scores, eval_cfg) -> None:
    out[f"{prefix}/{name}"] = float(fn(y, scores))
    low, high = M.bootstrap_ci(fn, y, scores, n=eval_cfg.bootstrap, seed=eval_cfg.seed)
    if not (np.isnan(low) or np.isnan(high)):
        out[f"{prefix}/{name}_ci_low"] = low
        out[f"{prefix}/{name}_ci_high"] = high


def _roc_frame(y_bin: np.ndarray, scores: np.ndarray, names: list[str]) -> pd.DataFrame:
    frames = []
    for c, name in enumerate(names):
        y = y_bin[:, c]
        if y.min() == y.max():
            continue
        fpr, tpr, thr = roc_curve(y, scores[:, c])
        frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "fpr", "tpr", "threshold"])
    )


def _evaluate_single_label(model, spec, manifest, root, prompts, eval_cfg, device, source):
    classes = list(spec.classes)
    if "label" not in manifest.columns:
        raise ValueError(f"{spec.name}: the manifest has no 'label' column (columns: {list(manifest.columns)})")
    unknown = sorted(set(manifest["label"].astype(str)) - set(classes))
    if unknown:
        raise ValueError(f"{spec.name}: manifest labels {unknown} are not among the benchmark classes {classes}")
    y = manifest["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    classifier = build_zero_shot_classifier(
        model, prompts, classes, eval_cfg.ensemble, device=device, source=source, precision=eval_cfg.precision
    )
    images = embed_images(
        model,
        manifest,
        root,
        eval_cfg.batch_size,
        eval_cfg.num_workers,
        device,
        desc=spec.name,
        precision=eval_cfg.precision,
    )
    logits = logit_scale(model) * images.double() @ classifier.double().cpu().T
    probs = torch.softmax(logits, dim=1).numpy()

    prefix = f"zeroshot/{spec.name}"
    out: dict[str, float] = {f"{prefix}/n_images": int(len(y))}
    if spec.task == "binary":
        # binary AUROC is the positive class's; order columns as (negative, positive)
        pos = positive_index(spec)
        scores = np.stack([probs[:, 1 - pos], probs[:, pos]], 1) if len(classes) == 2 else probs
        y_metric = (y == pos).astype(int) if len(classes) == 2 else y
    else:
        scores, y_metric = probs, y
    for name, fn in CLASSIFICATION_METRICS.items():
        try:
            _with_ci(out, prefix, name, fn, y_metric, scores, eval_cfg)
        except M.UndefinedMetricError:
            continue  # e.g. AUROC on a split holding one class only

    pred = probs.argmax(1)
    predictions = pd.DataFrame(
        {
            "image": manifest["image"].to_numpy(),
            "actual": [classes[i] for i in y],
            "predicted": [classes[i] for i in pred],
        }
    )
    for c, name in enumerate(classes):
        predictions[f"prob_{_slug(name)}"] = probs[:, c]
    y_onehot = np.eye(len(classes), dtype=int)[y]
    roc_names = [classes[positive_index(spec)]] if spec.task == "binary" else classes
    roc_cols = [positive_index(spec)] if spec.task == "binary" else list(range(len(classes)))
    roc = _roc_frame(y_onehot[:, roc_cols], probs[:, roc_cols], roc_names)
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(counts, (y, pred), 1)
    confusion = pd.DataFrame(
        [
            {"actual": a, "predicted": p, "count": int(counts[i, j])}
            for i, a in enumerate(classes)
            for j, p in enumerate(classes)
        ]
    )
    return Evaluation(out, {"predictions": predictions, "roc": roc, "confusion": confusion}, [])


def _evaluate_multilabel(model, spec, manifest, root, prompts, eval_cfg, device, source):
    labels = list(spec.classes)
    missing = [c for c in labels if c not in manifest.columns]
    if missing:
        raise ValueError(f"{spec.name}: manifest lacks the label column(s) {missing}")
    y = manifest[labels].fillna(0).astype(float).clip(0, 1).astype(int).to_numpy()
    has_negative = NEGATIVE_CLASS in prompts or NEGATIVE_CLASS in labels
    names = labels + [NEGATIVE_CLASS] if has_negative and NEGATIVE_CLASS not in labels else labels
    classifier = build_zero_shot_classifier(
        model, prompts, names, eval_cfg.ensemble, device=device, source=source, precision=eval_cfg.precision
    )
    images = embed_images(
        model,
        manifest,
        root,
        eval_cfg.batch_size,
        eval_cfg.num_workers,
        device,
        desc=spec.name,
        precision=eval_cfg.precision,
    )
    logits = logit_scale(model) * images.double() @ classifier.double().cpu().T  # (N, len(names))
    if has_negative:
        # two-way softmax "finding" vs "No Finding" per label = sigmoid of the logit difference
        neg = names.index(NEGATIVE_CLASS)
        diff = logits[:, : len(labels)] - logits[:, neg : neg + 1]
        if NEGATIVE_CLASS in labels:  # "No Finding" as a label itself: against the strongest finding
            others = [i for i, c in enumerate(labels) if c != NEGATIVE_CLASS]
            if others:
                diff[:, neg] = logits[:, neg] - logits[:, others].max(dim=1).values
        scores = torch.sigmoid(diff).numpy()
    else:
        scores = torch.sigmoid(logits).numpy()

    prefix = f"zeroshot/{spec.name}"
    out: dict[str, float] = {f"{prefix}/n_images": int(len(y))}
    try:
        _with_ci(out, prefix, "auroc", M.macro_auroc, y, scores, eval_cfg)
    except M.UndefinedMetricError:
        pass
    for c, name in enumerate(labels):
        if 0 < y[:, c].sum() < len(y):
            out[f"{prefix}/auroc_{_slug(name)}"] = M.macro_auroc(y[:, c], scores[:, c])
    predictions = pd.DataFrame({"image": manifest["image"].to_numpy()})
    for c, name in enumerate(labels):
        predictions[f"label_{_slug(name)}"] = y[:, c]
        predictions[f"score_{_slug(name)}"] = scores[:, c]
    return Evaluation(out, {"predictions": predictions, "roc": _roc_frame(y, scores, labels)}, [])


def evaluate_benchmark(
    model: EvalModel,
    spec: Benchmark,
    manifest: pd.DataFrame,
    root: str | Path,
    prompts: dict[str, list[str]],
    eval_cfg: EvaluateConfig,
    device: torch.device | str | None = None,
    *,
    source: str | None = None,
) -> Evaluation:
    """Evaluate ``model`` on one benchmark; returns ``(metrics, tables, overlays)`` (:class:`Evaluation`).

    ``spec``: a registry :class:`~ace_lora.registry.Benchmark` (``name``, ``task``, ``classes``); ``manifest``: its
    evaluated rows (image paths relative to ``root``); ``prompts``: class name -> prompt texts (``source`` names the
    prompts file in errors); ``eval_cfg``: :class:`ace_lora.config.EvaluateConfig`.

    * ``multiclass`` / ``binary``: keys ``zeroshot/<benchmark>/{accuracy,balanced_accuracy,auroc,f1}`` each with
      ``_ci_low`` / ``_ci_high`` (95 % percentile bootstrap over images; omitted when ``eval_cfg.bootstrap == 0``),
      and ``n_images``. Binary AUROC is the positive class's (``spec.positive`` if set, else the last class).
      Tables: ``predictions`` (per image: actual, predicted, class probabilities), ``roc`` (class, fpr, tpr,
      threshold; one-vs-rest per class for multiclass), ``confusion`` (actual, predicted, count).
    * ``multilabel``: every finding column is scored on its own: if the prompts include ``"No Finding"``, the
      score is the two-way softmax "finding" vs "No Finding" (= sigmoid of the logit difference; when
      "No Finding" is itself a label, as in MIMIC's 14 CheXpert findings, its score is its logit against the
      strongest finding's); otherwise the sigmoid of the finding's logit. Keys ``zeroshot/<benchmark>/auroc``
      (macro over findings with both classes, with CI) and ``auroc_<finding>``. Tables: ``predictions``, ``roc``.
    * ``segmentation`` / ``detection``: :func:`ace_lora.eval.grounding.evaluate_grounding`: zero-shot grounding
      (keys ``grounding/<benchmark>/{dice|map,...}``) and the data-efficient linear patch heads of
      ``eval_cfg.dataeff_fractions`` (keys ``dataeff_<pct>pct/<benchmark>/...``); the threshold is chosen on the
      benchmark's ``val`` split and the heads train on its ``train`` split (both read with ``load_benchmark`` from
      ``root.parent``). Overlays: the figure data of the first ``eval_cfg.overlays`` test images per protocol.

    Classification returns no overlays. Nothing is written: the evaluate stage writes the tables (CSV) and draws
    the overlays (PNG).
    """
    root = Path(root)
    _check_manifest(spec, manifest, root)
    manifest = manifest.reset_index(drop=True)
    if spec.task in ("segmentation", "detection"):
        return evaluate_grounding(model, spec, manifest, root, prompts, eval_cfg, device, source=source)
    if spec.task in ("multiclass", "binary"):
        return _evaluate_single_label(model, spec, manifest, root, prompts, eval_cfg, device, source)
    if spec.task == "multilabel":
        return _evaluate_multilabel(model, spec, manifest, root, prompts, eval_cfg, device, source)
    raise ValueError(f"{spec.name}: unknown task {spec.task!r}")
