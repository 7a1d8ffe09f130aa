"""Batched ACE-HGNN against a plain per-sample implementation of the docs/method.md#ace-hgnn equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ace_lora.models.hgnn import AceHgnn, hyperedge_incidence


def reference_incidence(x: torch.Tensor, alpha: torch.Tensor, k: int) -> torch.Tensor:
    """One sample, written from the equations: x [N,D], alpha [N-1] -> H [N,N]."""
    n = x.shape[0]
    xh = F.normalize(x, dim=-1)
    s = torch.full((n, n), float("-inf"), dtype=torch.float64)
    for i in range(1, n):
        for j in range(1, n):
            if i != j:
                s[i, j] = float(xh[i] @ xh[j])  # cosine
    for j in range(1, n):
        s[0, j] = float(alpha[j - 1])  # S_0j = α_j
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        candidates = [j for j in range(n) if s[i, j] > float("-inf")]
        kept = sorted(candidates, key=lambda j: -s[i, j])[:k]
        if kept:
            e = torch.exp(s[i, kept] - s[i, kept].max())
            w[i, kept] = e / e.sum()
    h = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        h[i, i] = 1.0
        for j in range(1, n):
            if j != i:
                h[i, j] = w[i, j]
    for j in range(1, n):
        h[j, 0] = w[0, j]  # CLS joins e_j with weight W_0j
    return h


def reference_v0(hgnn: AceHgnn, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    h = reference_incidence(x, alpha, hgnn.topk).to(x.dtype)
    e = hgnn.edge(h @ x)  # Ẽ = φ_edge(H·X)
    y = hgnn.node(h.t() @ e)  # Y = φ_node(Hᵀ·Ẽ)
    if hgnn.fusion == "residual":
        return F.normalize(x[0] + hgnn.gamma * y[0], dim=-1)
    return F.normalize(y[0], dim=-1)


def _inputs(b=3, n=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    alpha = torch.randn(b, n - 1, generator=g)
    return x, alpha


@pytest.mark.parametrize("topk", [1, 3, 5, 11, 20])
def test_incidence_matches_reference(topk):
    x, alpha = _inputs()
    h = hyperedge_incidence(x, alpha, topk)
    for i in range(x.shape[0]):
        torch.testing.assert_close(h[i].double(), reference_incidence(x[i], alpha[i], topk), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", ["replace", "residual"])
def test_batched_hgnn_matches_per_sample(fusion):
    torch.manual_seed(0)
    hgnn = AceHgnn(16, hidden=8, topk=5, fusion=fusion)
    if fusion == "residual":
        with torch.no_grad():
            hgnn.gamma.fill_(0.7)
    x, alpha = _inputs()
    out = hgnn(x, alpha)
    want = torch.stack([reference_v0(hgnn, x[i], alpha[i]) for i in range(x.shape[0])])
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_node_mask_equals_dropping_the_nodes():
    """content variant: masked nodes behave as if they were not in the sequence at all."""
    torch.manual_seed(0)
    hgnn = AceHgnn(16, hidden=8, topk=3)
    x, alpha = _inputs(b=2, n=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, [2, 9]] = False
    out = hgnn(x, alpha, mask)
    for i in range(2):
        keep = mask[i].nonzero().squeeze(1)
        want = reference_v0(hgnn, x[i, keep], alpha[i, keep[1:] - 1])
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=1e-5)


def test_short_sequences_and_fully_masked_rows_stay_finite():
    torch.manual_seed(0)
    hgnn = AceHgnn(16, hidden=8, topk=5)
    x, alpha = _inputs(b=2, n=4)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    x.requires_grad_(True)
    out = hgnn(x, alpha, mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_gradient_flows_through_kept_weights_and_features():
    torch.manual_seed(0)
    hgnn = AceHgnn(16, hidden=8, topk=3)
    x, alpha = _inputs()
    x.requires_grad_(True)
    alpha.requires_grad_(True)
    hgnn(x, alpha).sum().backward()
    assert x.grad.abs().sum() > 0 and alpha.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hgnn.parameters())
    # only the CLS's selected patches get prior gradient (top-k selection itself has none)
    assert ((alpha.grad != 0).sum(dim=1) <= 3).all()


def test_output_depends_on_two_hop_neighbourhood_only():
    torch.manual_seed(0)
    hgnn = AceHgnn(16, hidden=8, topk=2)
    x, alpha = _inputs(b=1, n=30)
    x.requires_grad_(True)
    hgnn(x, alpha).sum().backward()
    touched = (x.grad[0].abs().sum(-1) > 0).sum()
    assert touched <= 1 + 2 + 2 * 2


def test_mlp_names_and_sizes_match_the_paper():
    hgnn = AceHgnn(512, hidden=128, topk=5)
    names = {n: tuple(p.shape) for n, p in hgnn.named_parameters()}
    assert names == {
        "edge.down.weight": (128, 512),
        "edge.down.bias": (128,),
        "edge.up.weight": (512, 128),
        "edge.up.bias": (512,),
        "node.down.weight": (128, 512),
        "node.down.bias": (128,),
        "node.up.weight": (512, 128),
        "node.up.bias": (512,),
    }
    assert sum(p.numel() for p in hgnn.parameters()) == 2 * 131_712  # φ_edge + φ_node (docs/method.md#lora)
