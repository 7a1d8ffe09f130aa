"""Label-guided symmetric InfoNCE (docs/method.md#label-guided-infonce).

Same-label off-diagonal pairs are removed from the denominators (logit -inf), never added as positives. Under
``torch.distributed`` the embeddings (with gradient reaching the local shard) and the labels are gathered from all
ranks, so negatives and the mask span the global batch; each rank scores its own rows against all columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.distributed import gather_nograd, gather_with_grad, get_rank, get_world_size


def label_mask(labels_rows: torch.Tensor, labels_cols: torch.Tensor, diagonal_offset: int = 0) -> torch.Tensor:
    """M [b, B] bool: True where column j stays in row i's denominator (j = i + offset, or labels differ)."""
    same = (labels_rows[:, None, :] == labels_cols[None, :, :]).all(dim=-1)
    keep = ~same
    rows = torch.arange(labels_rows.shape[0], device=keep.device)
    keep[rows, rows + diagonal_offset] = True
    return keep


class LabelGuidedInfoNCELoss(nn.Module):
    """``forward(image_emb, text_emb, logit_scale, labels=None) -> {"loss", "loss_i2t", "loss_t2i"}``.

    Embeddings are L2-normalised [b, D]; ``logit_scale`` is in linear space; ``labels`` [b, K] (any dtype) or None.
    With ``label_guided=False`` or ``labels=None`` it is plain symmetric InfoNCE.
    """

    def __init__(self, label_guided: bool = True) -> None:
        super().__init__()
        self.label_guided = label_guided

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor | float,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        b = image_emb.shape[0]
        offset = get_rank() * b if get_world_size() > 1 else 0
        all_images = gather_with_grad(image_emb)  # (B, D), rank-major
        all_texts = gather_with_grad(text_emb)
        image_emb, text_emb = image_emb.float(), text_emb.float()
        logits_i2t = logit_scale * image_emb @ all_texts.float().t()  # (b, B)
        logits_t2i = logit_scale * text_emb @ all_images.float().t()  # (b, B)
        if self.label_guided and labels is not None:
            all_labels = gather_nograd(labels)
            keep = label_mask(labels, all_labels, offset)
            logits_i2t = logits_i2t.masked_fill(~keep, float("-inf"))
            logits_t2i = logits_t2i.masked_fill(~keep, float("-inf"))
        target = torch.arange(b, device=image_emb.device) + offset
        loss_i2t = F.cross_entropy(logits_i2t, target)
        loss_t2i = F.cross_entropy(logits_t2i, target)
        return {"loss": (loss_i2t + loss_t2i) / 2, "loss_i2t": loss_i2t, "loss_t2i": loss_t2i}
