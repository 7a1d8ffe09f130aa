"""Dropout whose masks are cheap to draw on CPU and cheap to keep for backward.

Plain dropout on CPU draws every mask bit from torch's Mersenne Twister, one element at a time: at the paper size
that was a quarter of a training step (``benchmarks/bench_model.py``). Here a mask is drawn by numpy's PCG64DXSM
generator, seeded by one draw from torch's default generator, so ``torch.manual_seed`` and a restored RNG state
still reproduce every mask (resume, tests). On CUDA the mask comes from torch (Philox, already fast).

Each element is kept independently with probability ``1 - p`` (resolution 2^-32, finer than the 2^-24 of
``torch.bernoulli_``) and scaled by ``1 / (1 - p)``: the same distribution as ``nn.Dropout``. The 0/1 mask is kept
in the input's dtype, since mixed bool-float products are several times slower on CPU. :func:`dropout_matmul` fuses
dropout with the matrix product that follows it (LoRA's down-projection, attention probabilities times values) and
saves the undropped input instead of a dropped copy: one tensor for the q/k/v adapters of a layer, and for attention
the softmax output that the softmax's own backward keeps anyway.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_U32 = 2**32


def keep_mask(
    shape: tuple[int, ...], p: float, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """Tensor of ``shape``: 1 (True) with probability ``1 - p`` independently per element, else 0 (False)."""
    device = torch.device(device)
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability {p} outside [0, 1]")
    if p == 1:
        return torch.zeros(shape, device=device, dtype=dtype)
    if device.type != "cpu":
        return (torch.rand(shape, device=device) >= p).to(dtype)
    seed = int(torch.randint(0, 2**62, (1,)))  # advances torch's generator: seeding reproduces the mask
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.random.PCG64DXSM(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    keep = bits >= np.uint32(round(p * _U32))
    if dtype != torch.bool:  # numpy converts bool to float several times faster than torch does here
        keep = keep.astype(np.float32)
    return torch.from_numpy(keep).reshape(shape).to(dtype)


class _MaskScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return (grad * keep.to(grad.dtype)).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with the mask of :func:`keep_mask`."""
    if not training or p == 0:
        return x
    if p == 1:
        return x * 0
    return _MaskScale.apply(x, keep_mask(tuple(x.shape), p, x.device, x.dtype), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in ``nn.Dropout`` using :func:`dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability {p} outside [0, 1]")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _DropoutMatmul(torch.autograd.Function):
    """``(x ⊙ keep · scale) @ w``, saving x, keep and w (not the dropped copy of x).

    The scale is applied to the smaller operand (the output, the incoming gradient), so each x-sized tensor is
    multiplied by the mask once. ``keep`` has x's dtype: mixed-dtype products are several times slower on CPU.
    """

    @staticmethod
    def forward(ctx, x, keep, scale, w):
        ctx.save_for_backward(x, keep, w)
        ctx.scale = scale
        return torch.matmul(x * keep, w) * scale

    @staticmethod
    def backward(ctx, grad):
        x, keep, w = ctx.saved_tensors
        grad = grad * ctx.scale  # dtype: the forward's compute dtype (bf16 under autocast)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (torch.matmul(grad, w.to(grad.dtype).transpose(-1, -2)) * keep.to(grad.dtype)).to(x.dtype)
        if ctx.needs_input_grad[3]:
            dropped = (x * keep).to(grad.dtype)
            if w.dim() == 2:  # one weight shared over every leading dimension
                grad_w = dropped.reshape(-1, dropped.shape[-1]).t() @ grad.reshape(-1, grad.shape[-1])
            else:
                grad_w = dropped.transpose(-1, -2) @ grad
            grad_w = grad_w.to(w.dtype)
        return grad_x, None, None, grad_w


def dropout_matmul(x: torch.Tensor, w: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``dropout(x, p) @ w`` with :func:`keep_mask`; ``w`` is [in, out] (shared) or has x's leading dimensions."""
    if not training or p == 0:
        return torch.matmul(x, w)
    if p == 1:
        return torch.matmul(x * 0, w)
    return _DropoutMatmul.apply(x, keep_mask(tuple(x.shape), p, x.device, x.dtype), 1.0 / (1.0 - p), w)


def active_dropout_sites(model: nn.Module) -> list[str]:
    """Names of the places that drop activations in train mode (p > 0), in module order.

    Dropout modules (this module's, torch's), timm's ``DropPath`` / ``PatchDropout``, and the LoRA input dropout of
    each adapted layer (listed as ``<layer>.lora_dropout``). The BERT attention reads its probability dropout from
    ``attention.self.dropout`` and timm's fused attention from ``attn.attn_drop``, so both are covered.
    """
    sites = []
    for name, module in model.named_modules():
        if isinstance(module, (Dropout, nn.Dropout)):
            p = module.p
        elif type(module).__name__ == "DropPath":
            p = module.drop_prob
        elif type(module).__name__ == "PatchDropout":
            p = module.prob
        elif hasattr(module, "lora_A") and isinstance(getattr(module, "dropout", None), float):
            p, name = module.dropout, f"{name}.lora_dropout"
        else:
            continue
        if p > 0:
            sites.append(name)
    return sites
