"""Helpers shared by the model-core tests: a small WordPiece vocabulary and tiny-preset builders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ace_lora.config import HgnnConfig, LoraConfig, LossConfig, ModelConfig
from ace_lora.models.tokenizer import SPECIAL_TOKENS

SPECIALS = list(SPECIAL_TOKENS)
WORDS = [
    "no",
    "left",
    "right",
    "pleural",
    "effusion",
    "pneumothorax",
    "edema",
    "cardiomegaly",
    "atelectasis",
    "consolidation",
    "mild",
    "small",
    "large",
    "is",
    "seen",
    "there",
    "lung",
    "heart",
    "size",
    "normal",
    ".",
    ",",
]


def write_vocab(folder: Path) -> Path:
    """A vocab.txt folder usable by BertTokenizerFast.from_pretrained; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS) + "\n")
    return folder


def tiny_cfg(
    tokenizer: Path | None = None, lora: dict | None = None, hgnn: dict | None = None, **fields
) -> ModelConfig:
    cfg = ModelConfig(preset="tiny", tokenizer=None if tokenizer is None else str(tokenizer), **fields)
    if lora:
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(LoraConfig(), **lora))
    if hgnn:
        cfg = dataclasses.replace(cfg, hgnn=dataclasses.replace(HgnnConfig(), **hgnn))
    return cfg


def build_tiny(vocab_dir: Path, loss: LossConfig | None = None, **kw):
    from ace_lora.models import build_model

    return build_model(tiny_cfg(vocab_dir, **kw), loss)


def tiny_model(folder: Path):
    """The real tiny preset (random towers) with the model tests' small vocabulary written under ``folder``."""
    return build_tiny(write_vocab(folder / "vocab"))


def example_batch(model, batch: int = 4, seed: int = 0):
    """(images [B,3,H,W], ids, mask) with texts of different lengths (one truncated)."""
    g = torch.Generator().manual_seed(seed)
    size = model.preset.image_size
    images = torch.randn(batch, 3, size, size, generator=g)
    texts = [
        "left pleural effusion .",
        "no pneumothorax",
        "mild edema , normal heart size . " * 8,
        "there is small right effusion",
    ]
    ids, mask = model.tokenize([texts[i % len(texts)] for i in range(batch)])
    return images, ids, mask


@torch.no_grad()
def randomise_adapter(model, seed: int = 0, std: float = 0.05) -> None:
    """Give every LoRA B (zero at init) and HGNN weight a random value so adapters have an effect."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name.split(".") or name.split(".")[0].startswith("hgnn"):
            p.copy_(torch.randn(p.shape, generator=g) * std)
