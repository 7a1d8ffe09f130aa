"""The fast dropout of ace_lora.models.dropout: distribution, reproducibility, gradients, autocast, BERT attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ace_lora.models.biomedclip import _bert_attention
from ace_lora.models.dropout import Dropout, dropout, dropout_matmul, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_is_one_minus_p(p):
    n = 1_000_003  # odd: the last 32-bit half of the generator's output is dropped
    keep = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(keep.sum()) - n * (1 - p)) < 5 * sigma
    # no structure along the tensor: each half has the rate too, and neighbours are uncorrelated
    for half in (keep[: n // 2], keep[n // 2 :]):
        assert abs(half.float().mean().item() - (1 - p)) < 5 * sigma / (n / 2)
    k = keep.float()
    cov = ((k[1:] - k.mean()) * (k[:-1] - k.mean())).mean() / k.var()
    assert abs(cov.item()) < 5 / math.sqrt(n)


def test_masks_follow_torch_seed_and_dtype():
    torch.manual_seed(3)
    a, b = keep_mask((64, 33), 0.3), keep_mask((64, 33), 0.3)
    torch.manual_seed(3)
    a2 = keep_mask((64, 33), 0.3, dtype=torch.float32)
    assert not torch.equal(a, b)  # successive masks differ
    assert a2.dtype == torch.float32 and torch.equal(a2, a.float())  # the seed reproduces them, in any dtype
    state = torch.get_rng_state()
    c = keep_mask((10, 10), 0.5)
    torch.set_rng_state(state)
    assert torch.equal(c, keep_mask((10, 10), 0.5))  # a restored RNG state too (training resume)
    assert keep_mask((5,), 0.0).all() and not keep_mask((5,), 1.0).any()


def _same_mask_reference(x, p, seed):
    torch.manual_seed(seed)
    return keep_mask(tuple(x.shape), p, dtype=x.dtype) / (1 - p)


def test_dropout_values_and_gradient():
    x = torch.randn(6, 7, 8, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.25)
    m = _same_mask_reference(x, 0.25, 0)
    torch.testing.assert_close(y, x * m)
    (g,) = torch.autograd.grad((y * torch.arange(y.numel()).reshape(y.shape)).sum(), x)
    torch.testing.assert_close(g, m * torch.arange(y.numel()).reshape(y.shape))
    assert dropout(x, 0.25, training=False) is x
    layer = Dropout(0.25).eval()
    assert layer(x) is x and "p=0.25" in repr(layer)
    with pytest.raises(ValueError, match="outside"):
        Dropout(1.5)


@pytest.mark.parametrize("batched", [False, True])
def test_dropout_matmul_equals_dropout_then_matmul(batched):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, 16, dtype=torch.float64, requires_grad=True)
    w = (
        torch.randn(3, 4, 16, 6, dtype=torch.float64, requires_grad=True)
        if batched
        else torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    )
    torch.manual_seed(7)
    out = dropout_matmul(x, w, 0.4)
    m = _same_mask_reference(x, 0.4, 7)
    ref = torch.matmul(x * m, w)
    torch.testing.assert_close(out, ref)
    up = torch.randn(out.shape, dtype=torch.float64)
    got = torch.autograd.grad((out * up).sum(), (x, w))
    want = torch.autograd.grad((ref * up).sum(), (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(dropout_matmul(x, w, 0.4, training=False), torch.matmul(x, w))


def test_dropout_matmul_under_bf16_autocast_returns_fp32_grads():
    torch.manual_seed(2)
    x = torch.randn(4, 10, 32, requires_grad=True)
    a = torch.randn(3, 32, requires_grad=True)  # a LoRA A: [r, in], used transposed
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(5)
        out = dropout_matmul(x, a.t(), 0.1)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and a.grad.dtype == torch.float32
    m = _same_mask_reference(x, 0.1, 5)
    torch.testing.assert_close(out.float(), (x * m) @ a.t(), atol=0.1, rtol=0.02)
    torch.testing.assert_close(a.grad, ((x * m).reshape(-1, 32).sum(0)[None].expand(3, 32)), atol=0.5, rtol=0.02)


def test_bert_attention_dropout_path_matches_sdpa_without_drops():
    """The train-mode path (softmax, then dropout_matmul) with a mask that keeps everything equals fused SDPA."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    keys = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    keys[1, ..., 6:] = False  # padding of the second sequence
    module = torch.nn.Module()
    fused, _ = _bert_attention(module, q, k, v, keys, scaling=8**-0.5, dropout=0.0)
    tiny_p = 1e-12  # rounds to a 0 threshold: every element kept, scale 1/(1-1e-12)
    math_path, _ = _bert_attention(module, q, k, v, keys, scaling=8**-0.5, dropout=tiny_p)
    torch.testing.assert_close(math_path, fused, atol=1e-6, rtol=1e-5)
    additive = torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min)
    torch.testing.assert_close(
        _bert_attention(module, q, k, v, additive, scaling=8**-0.5, dropout=tiny_p)[0], fused, atol=1e-6, rtol=1e-5
    )
    assert fused.shape == (2, 9, 3, 8)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keys).transpose(1, 2)
    torch.testing.assert_close(fused, ref)


def test_vit_uses_explicit_attention_for_cpu_bf16_training_only(tmp_path):
    from model_support import build_tiny, write_vocab

    model = build_tiny(write_vocab(tmp_path / "vocab"))
    attn = model.visual.trunk.blocks[0].attn
    images = torch.randn(2, 3, model.preset.image_size, model.preset.image_size)
    seen = []
    handle = attn.register_forward_pre_hook(lambda module, args: seen.append(module.fused_attn))
    with torch.no_grad():
        fused = model.visual.forward_tokens(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            inference = model.visual.forward_tokens(images)
        training = model.visual.forward_tokens(images)
    handle.remove()
    assert seen == [True, True, False] and attn.fused_attn is True  # switched for that call only, then restored
    torch.testing.assert_close(training.float(), inference.float(), atol=0.05, rtol=0.05)
    torch.testing.assert_close(training.float(), fused, atol=0.1, rtol=0.1)
