"""Small stand-ins for the model, loss and pair data set of the training contract (docs/ARCHITECTURE.md).

Used by the training tests that exercise the loop itself (schedule, logs, resume, errors) on a model that runs in
milliseconds; ``install()`` swaps them into :mod:`ace_lora.train`. The tests that matter end to end (exact resume,
1 vs 2 processes, learnability) use the real tiny model instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ace_lora import distributed as D

N_FINDINGS = 14


class FakeModel(nn.Module):
    """Frozen random 'towers' + a low-rank trainable update per tower + a trainable head + logit scale."""

    def __init__(self, dim: int = 16, pixels: int = 64, vocab: int = 32, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_tower = nn.Linear(pixels, dim)
        self.text_tower = nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.image_tower.weight.copy_(torch.randn(dim, pixels, generator=g) / pixels**0.5)
            self.text_tower.weight.copy_(torch.randn(vocab, dim, generator=g))
        for p in [*self.image_tower.parameters(), *self.text_tower.parameters()]:
            p.requires_grad_(False)
        self.lora_a_image = nn.Parameter(torch.randn(4, pixels) * 0.1)
        self.lora_b_image = nn.Parameter(torch.zeros(dim, 4))
        self.lora_a_text = nn.Parameter(torch.randn(4, dim) * 0.1)
        self.lora_b_text = nn.Parameter(torch.zeros(dim, 4))
        self.hgnn_mix = nn.Parameter(torch.eye(dim) + 0.01 * torch.randn(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.dropout = nn.Dropout(dropout)
        self.vocab, self.pixels = vocab, pixels

    def image_transform(self, train: bool):
        return lambda x: x

    def tokenize(self, texts):
        def token(w: str) -> int:  # deterministic across processes (unlike hash())
            return int(w[1:]) % (self.vocab - 2) + 2 if w[1:].isdigit() else 1

        ids = torch.tensor([[token(w) for w in t.split()][:6] + [0] * (6 - len(t.split()[:6])) for t in texts])
        return ids, (ids != 0).long()

    def forward(self, images, input_ids, attention_mask):
        x = images.flatten(1)
        img = self.image_tower(x) + self.dropout(x) @ self.lora_a_image.T @ self.lora_b_image.T
        m = attention_mask.float()[..., None]  # (B, L, 1)
        txt = (self.text_tower(input_ids) * m).sum(1) / m.sum(1).clamp(min=1)
        txt = txt + self.dropout(txt) @ self.lora_a_text.T @ self.lora_b_text.T
        return F.normalize(img @ self.hgnn_mix, dim=-1), F.normalize(txt, dim=-1)


class FakeLoss(nn.Module):
    """Label-guided symmetric InfoNCE over the features and labels gathered from every rank
    (docs/method.md#label-guided-infonce)."""

    def __init__(self, label_guided: bool = True):
        super().__init__()
        self.label_guided = label_guided

    def forward(self, image_emb, text_emb, logit_scale, labels=None):
        image_emb, text_emb = D.gather_with_grad(image_emb), D.gather_with_grad(text_emb)
        logits = logit_scale * image_emb @ text_emb.T  # (B, B)
        if self.label_guided and labels is not None:
            labels = D.gather_nograd(labels)
            same = (labels[:, None, :] == labels[None, :, :]).all(-1)
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(logits), device=logits.device)
        return {"loss": 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))}


class FakePairs(Dataset):
    """Deterministic image/report pairs whose labels decide both the image pattern and the report words."""

    def __init__(self, n: int, seed: int, model: FakeModel):
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.rand(n, N_FINDINGS, generator=g) < 0.15).float()
        self.labels[:, 0] = (torch.arange(n) % 3 == 0).float()
        proto = torch.randn(N_FINDINGS, model.pixels, generator=torch.Generator().manual_seed(99))
        self.images = self.labels @ proto + 0.5 * torch.randn(n, model.pixels, generator=g)
        texts = [" ".join(f"w{c}" for c in torch.nonzero(row).flatten().tolist()) or "normal" for row in self.labels]
        self.ids, self.mask = model.tokenize(texts)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "image": self.images[i],
            "input_ids": self.ids[i],
            "attention_mask": self.mask[i],
            "labels": self.labels[i],
        }


def install(train_module, n_train: int = 48, n_val: int = 24, dropout: float = 0.0, patch=None) -> None:
    """Route :mod:`ace_lora.train`'s model, loss, data and adapter writer to the fakes.

    ``patch(obj, name, value)`` defaults to ``setattr`` (pass ``monkeypatch.setattr`` in pytest).
    """
    patch = patch or setattr

    def build_components(model_cfg, loss_cfg):
        return FakeModel(dropout=dropout, seed=model_cfg.init_seed), FakeLoss(loss_cfg.label_guided)

    def make_pair_dataset(params, model, split, train):
        return FakePairs(n_train if split == "train" else n_val, 1 if split == "train" else 2, model)

    def save_adapter_atomic(model, adapter_dir, extra):
        adapter_dir = Path(adapter_dir)
        adapter_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"weights": train_module.trainable_state(model), "extra": extra}, adapter_dir / "adapter.pt")

    patch(train_module, "build_components", build_components)
    patch(train_module, "make_pair_dataset", make_pair_dataset)
    patch(train_module, "save_adapter_atomic", save_adapter_atomic)
    patch(train_module, "make_validator", make_validator)
    patch(train_module, "read_pairs_manifest", lambda params, split: (None, None))


@torch.no_grad()
def pair_auroc(image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of image-report similarity at telling same-label pairs (i = j included) from the rest."""
    from sklearn.metrics import roc_auc_score

    sim = (image_emb @ text_emb.T).flatten()
    same = (labels[:, None, :] == labels[None, :, :]).all(-1).flatten()
    return float(roc_auc_score(same.numpy(), sim.numpy()))


def make_validator(params, model, device, bf16):
    """A validation metric for the fakes: pair AUROC on the fake validation pairs."""
    data = FakePairs(24, 2, model)

    def validate(m):
        img, txt = m(data.images, data.ids, data.mask)
        return pair_auroc(img, txt, data.labels)

    return "val/fake/pair_auroc", validate


def use_sgd(patch=None) -> None:
    """Replace AdamW by plain SGD (same lr and weight decay) for the training loop.

    The 1-vs-N-process test compares weights after a few steps: AdamW divides each update by the gradient's
    running RMS, so it hides a constant gradient factor and blows float noise of near-zero gradients up to ~lr;
    SGD keeps the weights a linear function of the gradients.
    """
    patch = patch or setattr

    def sgd(params, lr, weight_decay, betas):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

    patch(torch.optim, "AdamW", sgd)
