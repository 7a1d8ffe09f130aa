"""LoraLinear unit tests: block-structured fused-qkv update, scaling, merge/unmerge, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ace_lora.config import LoraConfig, ParamsError, build
from ace_lora.models.lora import LoraLinear


def _fused(d=12, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, 3 * d)


@pytest.mark.parametrize("targets", [["q", "k", "v"], ["q", "v"], ["k"]])
def test_fused_qkv_gets_one_adapter_per_slice(targets):
    base = _fused()
    original = base.weight.detach().clone()
    layer = LoraLinear(
        base,
        [("q", 12), ("k", 12), ("v", 12)],
        targets,
        rank=4,
        alpha=1.0,
        dropout=0.0,
        generator=torch.Generator().manual_seed(0),
    ).eval()
    assert layer.scaling == pytest.approx(1 / math.sqrt(4)) == 0.5  # docs/method.md#lora: alpha / sqrt(r)
    assert list(layer.lora_A) == targets and all(layer.lora_A[t].shape == (4, 12) for t in targets)
    with torch.no_grad():
        for t in targets:
            layer.lora_B[t].normal_()
    x = torch.randn(5, 7, 12)
    y = layer(x)
    want = base(x).clone()
    for i, name in enumerate("qkv"):
        if name in targets:
            want[..., 12 * i : 12 * (i + 1)] += 0.5 * x @ layer.lora_A[name].t() @ layer.lora_B[name].t()
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    layer.merge()
    layer.merge()  # idempotent
    delta = (base.weight - original).detach()
    for i, name in enumerate("qkv"):
        rows = delta[12 * i : 12 * (i + 1)]
        if name in targets:
            torch.testing.assert_close(rows, 0.5 * layer.lora_B[name] @ layer.lora_A[name])
        else:
            assert torch.count_nonzero(rows) == 0
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, original, atol=1e-6, rtol=0)
    assert not layer.merged


def test_b_starts_at_zero_and_a_is_kaiming_uniform():
    layer = LoraLinear(
        nn.Linear(768, 768),
        [("q", 768)],
        ["q"],
        rank=4,
        alpha=1.0,
        dropout=0.1,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.count_nonzero(layer.lora_B["q"]) == 0
    bound = 1 / math.sqrt(768)  # kaiming_uniform(a=sqrt(5)) on fan_in 768
    a = layer.lora_A["q"]
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound


def test_lora_config_rejects_bad_combinations():
    with pytest.raises(ParamsError, match="lora.targets"):
        build(LoraConfig, {"targets": []})
    with pytest.raises(ParamsError, match="lora.towers"):
        build(LoraConfig, {"towers": ["image", "image"]})
    with pytest.raises(ParamsError, match=r"layers\[0\]: -1 is below the minimum 0"):
        build(LoraConfig, {"layers": [-1]})
    with pytest.raises(ParamsError, match="rank"):
        build(LoraConfig, {"rank": 0})
    assert build(LoraConfig, {"enabled": False, "targets": []}).enabled is False


def test_segments_must_cover_the_output():
    with pytest.raises(ValueError, match="out_features"):
        LoraLinear(nn.Linear(4, 8), [("q", 4)], ["q"], rank=2, alpha=1.0, dropout=0.0)
    with pytest.raises(ValueError, match="none of"):
        LoraLinear(nn.Linear(4, 4), [("q", 4)], ["v"], rank=2, alpha=1.0, dropout=0.0)
