"""A fake model of the evaluation contract (docs/ARCHITECTURE.md) whose image embeddings equal the prompt
embeddings, and a benchmark spec stand-in; shared by the zero-shot and grounding tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

VOCAB = ["No Finding", "normal", "atelectasis", "cardiomegaly", "edema", "effusion", "pneumothorax", "pneumonia"]
SIZE, PATCH = 32, 8  # 4 x 4 patch grid


class FakeModel(torch.nn.Module):
    """Implements the model contract of docs/ARCHITECTURE.md without learning anything.

    A text's embedding is the one-hot vector of the first vocabulary word it contains. An image patch of mean
    intensity ``v`` embeds as a soft one-hot centred on vocabulary index ``v * (len(VOCAB) - 1)``; the CLS node is
    the same function of the whole image's mean intensity. So an image of intensity ``k / (len(VOCAB) - 1)``
    matches the prompts of ``VOCAB[k]``.
    """

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(50.0))
        self.dim = len(VOCAB)
        self.preset = type("Preset", (), {"image_size": SIZE, "context_length": 6, "embed_dim": self.dim})()

    def image_transform(self, train: bool = False):
        def transform(img: Image.Image) -> torch.Tensor:
            arr = np.asarray(img.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
            return torch.from_numpy(arr).permute(2, 0, 1)

        return transform

    def _embed_level(self, v: torch.Tensor) -> torch.Tensor:  # (...,) -> (..., D)
        centre = v.unsqueeze(-1) * (self.dim - 1)
        return F.normalize(torch.exp(-4.0 * (centre - torch.arange(self.dim)) ** 2), dim=-1)

    def image_nodes(self, images: torch.Tensor):
        gray = images.float().mean(1)  # (B, H, W)
        patches = F.avg_pool2d(gray.unsqueeze(1), PATCH).flatten(1)  # (B, P)
        nodes = torch.cat([self._embed_level(gray.mean((1, 2)))[:, None], self._embed_level(patches)], 1)
        return nodes, torch.zeros(len(images), patches.shape[1])

    def image_global(self, nodes, prior):
        return nodes[:, 0]

    def encode_image(self, images):
        return self.image_global(*self.image_nodes(images))

    def tokenize(self, texts):
        ids = torch.zeros(len(texts), 6, dtype=torch.long)
        for i, text in enumerate(texts):
            low = text.lower()
            hits = [(low.find(w.lower()), -len(w), j) for j, w in enumerate(VOCAB) if w.lower() in low]
            ids[i, 0] = min(hits)[2] + 1
            ids[i, 1] = 1
        return ids, (ids > 0).long()

    def text_nodes(self, ids, mask):
        nodes = F.one_hot(ids[:, :1].clamp(min=1) - 1, self.dim).float().expand(-1, ids.shape[1], -1)
        return nodes, torch.zeros(len(ids), ids.shape[1] - 1), mask.bool()

    def text_global(self, nodes, prior, node_mask):
        return F.normalize(nodes[:, 0], dim=-1)

    def encode_text(self, ids, mask):
        return self.text_global(*self.text_nodes(ids, mask))


@dataclasses.dataclass
class FakeSpec:
    name: str
    task: str
    classes: list
    domain: str = "chest"


def level(name: str) -> int:
    return int(round(255 * VOCAB.index(name) / (len(VOCAB) - 1)))


def prompts_for(classes):
    return {c: [f"a chest x-ray image of {c}.", f"findings suggesting {c}."] for c in classes}
