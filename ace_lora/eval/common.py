"""What every evaluation protocol shares: the model contract, the result records, the zero-shot classifier.

Layers of :mod:`ace_lora.eval` (each imports only those above it; none draws figures):

1. :mod:`ace_lora.eval.metrics`: metric functions on arrays;
2. this module: :class:`EvalModel` (what evaluation calls on a model), :class:`Overlay` and :class:`Evaluation`
   (what it returns), :func:`build_zero_shot_classifier` and the small helpers both protocols use;
3. :mod:`ace_lora.eval.grounding`: segmentation and detection (patch maps);
4. :mod:`ace_lora.eval.zeroshot`: classification and :func:`~ace_lora.eval.zeroshot.evaluate_benchmark`, the one
   entry point that branches on the task.

The evaluate stage (``ace_lora/cli.py``) writes what evaluation returns: tables as CSV, overlays as PNG
(``ace_lora/plots.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ace_lora.distributed import autocast
from ace_lora.registry import Benchmark

__all__ = [
    "EvalModel",
    "EvalPreset",
    "Overlay",
    "Evaluation",
    "build_zero_shot_classifier",
    "eval_mode",
    "model_device",
    "logit_scale",
    "image_dataset",
    "positive_index",
    "check_prompts",
]


# ---------------------------------------------------------------------------------------- the contract


class EvalPreset(Protocol):
    """The part of a model preset evaluation reads."""

    image_size: int  # side of the square model input, pixels


@runtime_checkable
class EvalModel(Protocol):
    """Exactly what evaluation calls on a model (``ace_lora.models.AceLoraModel`` and the tests' fakes satisfy it).

    ``torch.nn.Module`` provides ``training``, ``eval``, ``train`` and ``parameters``; the rest is the model
    contract of docs/ARCHITECTURE.md. ``B`` images, ``T`` texts, ``L`` tokens, ``P`` patches, ``D`` embedding size.
    """

    training: bool
    logit_scale: torch.Tensor  # the learned scale of the logits, linear space (a 0-d tensor)
    preset: EvalPreset

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def image_transform(self, train: bool = False) -> Callable[[Any], torch.Tensor]:
        """PIL image -> ``(3, H, W)`` input tensor (``train=False``: the evaluation transform)."""
        ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> global image embeddings ``(B, D)``."""
        ...

    def image_nodes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> (nodes ``(B, 1 + P, D)``, CLS first then a square patch grid; prior)."""
        ...

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (token ids ``(T, L)``, attention mask ``(T, L)``)."""
        ...

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask -> global text embeddings ``(T, D)``."""
        ...

    def text_nodes(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids and mask -> (nodes ``(T, L, D)``, prior ``(T, L - 1)``, node mask ``(T, L)``)."""
        ...

    def text_global(self, nodes: torch.Tensor, prior: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """Text nodes, prior and node mask -> global text embeddings ``(T, D)``."""
        ...


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Overlay:
    """The data of one grounding figure: a test image, its similarity heatmap, prediction and ground truth.

    ``kind``: ``"segmentation"`` (``prediction`` and ``truth`` are boolean masks) or ``"detection"`` (boxes
    ``(k, 4)`` as ``x1, y1, x2, y2`` in image pixels); ``image``: grey ``(size, size)``; ``heatmap``: the sigmoid
    of the log-odds map, in [0, 1]; ``filename``: the PNG's name in the evaluation folder.
    """

    kind: str
    filename: str
    title: str
    image: np.ndarray
    heatmap: np.ndarray
    prediction: np.ndarray
    truth: np.ndarray


class Evaluation(NamedTuple):
    """What evaluating one benchmark returns: ``metrics, tables, overlays = evaluate_benchmark(...)``."""

    metrics: dict[str, float]
    tables: dict[str, pd.DataFrame]  # name -> table (predictions, ROC points, confusion counts, thresholds)
    overlays: list[Overlay]  # grounding figures (empty for classification)


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def eval_mode(model: EvalModel) -> Iterator[None]:
    """Evaluation mode (LoRA dropout off) for the duration, then the previous mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: EvalModel, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter (CPU for a model without any)."""
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def logit_scale(model: EvalModel) -> float:
    """The model's logit scale as a Python float."""
    return float(model.logit_scale.detach().float().cpu())


def image_dataset(manifest: pd.DataFrame, root: Path, transform: Callable[[Any], torch.Tensor]):
    """The manifest's images under ``root`` as ``{"image", "index"}`` items (:class:`ace_lora.data.dataset.
    ImageDataset`; imported here so that loading :mod:`ace_lora.eval` does not load the data package)."""
    from ace_lora.data.dataset import ImageDataset

    return ImageDataset(manifest, root, transform)


def positive_index(spec: Benchmark) -> int:
    """Index of a binary benchmark's positive class: ``spec.positive`` if set, else the last class."""
    positive = getattr(spec, "positive", None)
    return list(spec.classes).index(positive) if positive else len(spec.classes) - 1


def check_prompts(prompts: dict[str, list[str]], classes: list[str], source: str | None) -> None:
    """Fail naming the classes without prompts (``KeyError``) or with an empty list (``ValueError``)."""
    where = f" in {source}" if source else ""
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise KeyError(
            f"no prompts for class(es) {', '.join(map(repr, missing))}{where}; "
            f"prompts exist for: {', '.join(map(repr, prompts)) or 'none'}"
        )
    empty = [c for c in classes if not prompts[c]]
    if empty:
        raise ValueError(f"empty prompt list for class(es) {', '.join(map(repr, empty))}{where}")


# ------------------------------------------------------------------------------------------ classifier


@torch.inference_mode()
def build_zero_shot_classifier(
    model: EvalModel,
    prompts: dict[str, list[str]],
    classes: list[str],
    ensemble: str = "mean",
    *,
    device: torch.device | str | None = None,
    source: str | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Class embeddings ``(C, D)``, L2-normalised, one row per entry of ``classes`` (in that order).

    ``ensemble="mean"``: each prompt is embedded (``model.encode_text``) and L2-normalised; a class embedding is
    the mean over its prompts, re-normalised. ``ensemble="token_average"`` (the reference implementation): the
    prompts' text-node sequences (``model.text_nodes``, each node L2-normalised) are averaged position by position
    and passed once through ``model.text_global`` as they are, as the reference computes it: the averaged nodes are
    not re-normalised (the hypergraph's cosine scores normalise them, its message passing does not); the prior is
    the mean of the prompts' priors and the node mask their union.
    ``source`` names the prompts file in error messages; ``precision``: see ``evaluate.precision``.
    """
    if ensemble not in ("mean", "token_average"):
        raise ValueError(f"ensemble: {ensemble!r} is not one of ['mean', 'token_average']")
    check_prompts(prompts, classes, source)
    device = model_device(model, device)
    rows = []
    with eval_mode(model), autocast(device, precision):
        for name in classes:
            ids, mask = model.tokenize(list(prompts[name]))
            ids, mask = ids.to(device), mask.to(device)
            if ensemble == "mean":
                emb = F.normalize(model.encode_text(ids, mask).float(), dim=-1)  # (T, D)
                rows.append(F.normalize(emb.mean(0), dim=-1))
            else:
                nodes, prior, node_mask = model.text_nodes(ids, mask)  # (T, L, D), (T, L-1), (T, L)
                nodes = nodes.float().mean(0, keepdim=True)  # not re-normalised (reference)
                prior = prior.float().mean(0, keepdim=True)
                node_mask = node_mask.bool().any(0, keepdim=True)
                rows.append(F.normalize(model.text_global(nodes, prior, node_mask).float()[0], dim=-1))
    return torch.stack(rows)
