"""Read-out of the last layer's CLS-row attention (the ACE-HGNN prior, docs/method.md#ace-hgnn) through forward hooks.

The towers keep their fused attention (SDPA); forward hooks on the last layer's projection modules capture the
query of the CLS position and all keys, and the CLS row is recomputed here: ``q0·kj/√d`` (``logits``) or its
softmax over the unmasked keys (``softmax``), averaged over heads, for keys 1..P. Nothing in timm or transformers is
patched; the hooks only read module outputs (the LoRA-adapted ones when a projection is wrapped).
"""

from __future__ import annotations

import torch
from torch import nn


def _cls_row(q0: torch.Tensor, k: torch.Tensor, kind: str, key_mask: torch.Tensor | None) -> torch.Tensor:
    """q0 [B,H,d], k [B,H,N,d] -> head-averaged CLS-row prior over keys 1..N-1, [B,N-1]."""
    scale = q0.shape[-1] ** -0.5
    logits = torch.einsum("bhd,bhnd->bhn", q0.float(), k.float()) * scale  # (B, H, N)
    if kind == "logits":
        row = logits
    elif kind == "softmax":
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, :].bool(), torch.finfo(logits.dtype).min)
        row = logits.softmax(dim=-1)
    else:
        raise ValueError(f"attention prior kind {kind!r}: expected 'logits' or 'softmax'")
    return row.mean(dim=1)[:, 1:]


class VitPriorReader:
    """Hooks the last block's ``attn.qkv`` of a timm ViT (register after LoRA wrapping)."""

    def __init__(self, trunk: nn.Module) -> None:
        attn = trunk.blocks[-1].attn
        self.attn = attn
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self._q0: torch.Tensor | None = None
        self._k: torch.Tensor | None = None
        self.handle = attn.qkv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        b, n, _ = output.shape
        qkv = output.reshape(b, n, 3, self.num_heads, self.head_dim)
        q0 = self.attn.q_norm(qkv[:, :1, 0].transpose(1, 2))[:, :, 0]  # (B, H, d)
        k = self.attn.k_norm(qkv[:, :, 1].transpose(1, 2))  # (B, H, N, d)
        self._q0, self._k = q0, k

    def read(self, kind: str) -> torch.Tensor:
        """Prior [B, N-1] of the latest forward pass; clears the captured tensors."""
        if self._k is None:
            raise RuntimeError("no forward pass of the image tower captured")
        q0, k, self._q0, self._k = self._q0, self._k, None, None
        return _cls_row(q0, k, kind, None)


class BertPriorReader:
    """Hooks the last layer's ``attention.self.query``/``key`` of an HF BertModel (register after LoRA wrapping)."""

    def __init__(self, bert: nn.Module) -> None:
        sa = bert.encoder.layer[-1].attention.self
        self.num_heads, self.head_dim = sa.num_attention_heads, sa.attention_head_size
        self._q0: torch.Tensor | None = None
        self._k: torch.Tensor | None = None
        self.handles = [sa.query.register_forward_hook(self._hook_q), sa.key.register_forward_hook(self._hook_k)]

    def _hook_q(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._q0 = output[:, 0].unflatten(-1, (self.num_heads, self.head_dim))  # (B, H, d)

    def _hook_k(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._k = output.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, H, N, d)

    def read(self, kind: str, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Prior [B, L-1] of the latest forward pass (softmax over unpadded keys); clears the captured tensors."""
        if self._k is None or self._q0 is None:
            raise RuntimeError("no forward pass of the text tower captured")
        q0, k, self._q0, self._k = self._q0, self._k, None, None
        return _cls_row(q0, k, kind, attention_mask)
