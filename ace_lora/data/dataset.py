"""Torch Datasets over a prepared manifest: image-report pairs (training) and images (evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> FloatTensor[3,H,W] in [0, 1] (used when no transform is given)."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def open_rgb(path: Path) -> Image.Image:
    """Open a cached image as RGB (grayscale X-rays become 3 equal channels); errors name the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise OSError(f"{path}: cannot read prepared image ({err}); re-run `python -m ace_lora prepare`") from err


class ImageDataset(Dataset):
    """Items ``{"image": FloatTensor[3,H,W], "index": int}`` in manifest row order."""

    def __init__(self, manifest: pd.DataFrame, root: str | Path, transform: Callable | None = None):
        if "image" not in manifest.columns:
            raise ValueError(f"manifest has no 'image' column (columns: {list(manifest.columns)})")
        self.paths = [Path(root) / p for p in manifest["image"].astype(str)]
        self.transform = transform or _to_tensor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(open_rgb(self.paths[index])), "index": index}


class PairDataset(Dataset):
    """Image-report pairs: ``{"image", "input_ids", "attention_mask", "labels": FloatTensor[len(label_columns)]}``.

    Reports are tokenized once here (``tokenize(texts) -> (ids [B,L], mask [B,L])``), in chunks.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        transform: Callable | None,
        tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
        label_columns: Sequence[str],
        chunk: int = 1024,
    ):
        missing = [c for c in ["image", "text", *label_columns] if c not in manifest.columns]
        if missing:
            raise ValueError(f"manifest lacks column(s) {missing} (columns: {list(manifest.columns)})")
        self.images = ImageDataset(manifest, root, transform)
        texts = manifest["text"].fillna("").astype(str).tolist()
        ids, masks = [], []
        for start in range(0, len(texts), chunk):
            i, m = tokenize(texts[start : start + chunk])
            ids.append(torch.as_tensor(i)), masks.append(torch.as_tensor(m))
        # stored compactly (int32 ids, uint8 mask: ~1.3 kB per 256-token pair), returned as the tokenizer's dtypes
        self._dtypes = (ids[0].dtype, masks[0].dtype) if ids else (torch.long, torch.long)
        self.input_ids = torch.cat(ids).to(torch.int32) if ids else torch.zeros(0, 0, dtype=torch.int32)
        self.attention_mask = torch.cat(masks).to(torch.uint8) if masks else torch.zeros(0, 0, dtype=torch.uint8)
        values = manifest[list(label_columns)].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy()
        self.labels = torch.as_tensor((values == 1).astype(np.float32))  # (N, C); -1 / blank -> 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index]["image"],
            "input_ids": self.input_ids[index].to(self._dtypes[0]),
            "attention_mask": self.attention_mask[index].to(self._dtypes[1]),
            "labels": self.labels[index],
        }
