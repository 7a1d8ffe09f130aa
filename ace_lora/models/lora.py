"""LoRA adapters that wrap frozen ``nn.Linear`` layers (docs/method.md#lora).

``y = W0·x + b + s · B·A · dropout(x)`` with ``s = alpha / sqrt(r)``. A Linear whose output is a concatenation of
several projections (timm's fused ``qkv``) is wrapped once and gets one adapter per targeted slice, i.e. a
block-structured low-rank update of the fused weight. Merging (``W0 += s·B·A``) is explicit and reversible.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.models.dropout import dropout_matmul


class LoraLinear(nn.Module):
    """A frozen base ``nn.Linear`` plus one rank-``r`` adapter per targeted output slice.

    ``segments`` names the consecutive output slices of the base layer, e.g. ``[("q", 768), ("k", 768),
    ("v", 768)]`` for a fused qkv Linear or ``[("q", 768)]`` for a plain query Linear. Adapters live in
    ``lora_A[name]`` ([r, in]) and ``lora_B[name]`` ([slice, r]).
    """

    def __init__(
        self,
        base: nn.Linear,
        segments: Sequence[tuple[str, int]],
        targets: Iterable[str],
        rank: int,
        alpha: float,
        dropout: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if sum(size for _, size in segments) != base.out_features:
            raise ValueError(f"segments {list(segments)} do not add up to out_features={base.out_features}")
        self.base_layer = base
        self.segments = [(name, int(size)) for name, size in segments]
        self.targets = [name for name, _ in self.segments if name in set(targets)]
        if not self.targets:
            raise ValueError(f"none of {list(targets)} is among the segments {[n for n, _ in self.segments]}")
        self.rank = rank
        self.scaling = alpha / math.sqrt(rank)
        self.dropout = float(dropout)
        sizes = dict(self.segments)
        dd = dict(device=base.weight.device, dtype=base.weight.dtype)
        # OrderedDict keeps the segment order (a plain dict would be sorted by ParameterDict)
        self.lora_A = nn.ParameterDict(
            OrderedDict((n, nn.Parameter(torch.empty(rank, base.in_features, **dd))) for n in self.targets)
        )
        self.lora_B = nn.ParameterDict(
            OrderedDict((n, nn.Parameter(torch.zeros(sizes[n], rank, **dd))) for n in self.targets)
        )
        self.merged = False
        self.reset_lora_parameters(generator)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @torch.no_grad()
    def reset_lora_parameters(self, generator: torch.Generator | None = None) -> None:
        """A: kaiming-uniform (a=sqrt(5)), drawn in target order from ``generator``; B: zeros (ΔW = 0)."""
        for name in self.targets:
            a = self.lora_A[name]
            if a.device.type == "meta":
                continue
            if generator is not None and generator.device != a.device:
                value = torch.empty(a.shape, dtype=a.dtype)
                nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=generator)
                a.copy_(value)
            else:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_B[name].zero_()

    def _slice(self, name: str) -> slice:
        start = 0
        for seg, size in self.segments:
            if seg == name:
                return slice(start, start + size)
            start += size
        raise KeyError(name)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``s · B·A`` of one slice, shape [slice, in]."""
        return self.scaling * (self.lora_B[name] @ self.lora_A[name])

    def _block_b(self) -> torch.Tensor:
        """Block-diagonal [out, r·targets] B: slice rows of targeted segments, zeros elsewhere."""
        blocks = []
        for name, size in self.segments:
            if name in self.lora_B:
                blocks.append(self.lora_B[name])
            else:
                blocks.append(self.lora_B[self.targets[0]].new_zeros(size, 0))
        return torch.block_diag(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        if self.training and self.dropout > 0:
            # one independent dropout mask per adapter, as with separate LoRA layers
            h = torch.cat([dropout_matmul(x, self.lora_A[n].t(), self.dropout) for n in self.targets], dim=-1)
        else:
            h = F.linear(x, torch.cat([self.lora_A[n] for n in self.targets], dim=0))  # (..., r·T)
        return y + self.scaling * F.linear(h, self._block_b().to(h.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ``s·B·A`` into the base weight; forward then skips the adapter branch."""
        if self.merged:
            return
        for name in self.targets:
            w = self.base_layer.weight
            w[self._slice(name)] += self.delta_weight(name).to(w.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``s·B·A`` again (restores the base weight up to float rounding)."""
        if not self.merged:
            return
        for name in self.targets:
            w = self.base_layer.weight
            w[self._slice(name)] -= self.delta_weight(name).to(w.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"targets={self.targets}, rank={self.rank}, scaling={self.scaling:.4g}, dropout={self.dropout}, "
            f"merged={self.merged}"
        )


def lora_modules(model: nn.Module) -> list[LoraLinear]:
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model):
        m.unmerge()


def _replace_child(parent: nn.Module, name: str, new: nn.Module) -> None:
    setattr(parent, name, new)


def apply_lora_to_vit(
    trunk: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    layers: Sequence[int] | None,
    generator: torch.Generator,
    seed: int | None,
) -> list[int]:
    """Wrap ``blocks[i].attn.qkv`` (q/k/v slices) and ``blocks[i].attn.proj`` (o) of a timm ViT.

    ``seed`` not None reproduces the reference quirk: the generator is reseeded before every layer.
    Returns the wrapped layer indices.
    """
    done = []
    for i, block in enumerate(trunk.blocks):
        if layers is not None and i not in layers:
            continue
        if seed is not None:
            generator.manual_seed(seed)
        attn = block.attn
        qkv_targets = [t for t in targets if t in ("q", "k", "v")]
        if qkv_targets:
            d = attn.qkv.out_features // 3
            _replace_child(
                attn,
                "qkv",
                LoraLinear(attn.qkv, [("q", d), ("k", d), ("v", d)], qkv_targets, rank, alpha, dropout, generator),
            )
        if "o" in targets:
            _replace_child(
                attn,
                "proj",
                LoraLinear(attn.proj, [("o", attn.proj.out_features)], ["o"], rank, alpha, dropout, generator),
            )
        done.append(i)
    return done


def apply_lora_to_bert(
    bert: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    layers: Sequence[int] | None,
    generator: torch.Generator,
    seed: int | None,
) -> list[int]:
    """Wrap ``encoder.layer[i].attention.self.{query,key,value}`` and ``attention.output.dense`` (o) of a BertModel."""
    names = {"q": "query", "k": "key", "v": "value"}
    done = []
    for i, layer in enumerate(bert.encoder.layer):
        if layers is not None and i not in layers:
            continue
        if seed is not None:
            generator.manual_seed(seed)
        sa = layer.attention.self
        for t in ("q", "k", "v"):
            if t in targets:
                base = getattr(sa, names[t])
                _replace_child(
                    sa, names[t], LoraLinear(base, [(t, base.out_features)], [t], rank, alpha, dropout, generator)
                )
        if "o" in targets:
            out = layer.attention.output
            _replace_child(
                out,
                "dense",
                LoraLinear(out.dense, [("o", out.dense.out_features)], ["o"], rank, alpha, dropout, generator),
            )
        done.append(i)
    return done
