"""ACE-HGNN: attention-based context-enhancement hypergraph over a token sequence (docs/method.md#ace-hgnn).

Batched over the batch dimension (no per-sample Python loop). Shapes: B batch, N nodes (CLS + P tokens), D features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckMlp(nn.Module):
    """φ(z) = W2·LeakyReLU_0.2(W1·z + b1) + b2 with kaiming-normal W1, W2 (names match the official checkpoint)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.LeakyReLU(0.2)
        self.up = nn.Linear(hidden, dim)
        if self.down.weight.device.type != "meta":
            nn.init.kaiming_normal_(self.down.weight)
            nn.init.kaiming_normal_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def hyperedge_incidence(
    nodes: torch.Tensor, prior: torch.Tensor, topk: int, node_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Incidence H [B,N,N] (row = hyperedge e_i, column = node), docs/method.md#ace-hgnn.

    nodes [B,N,D] (x0 = CLS), prior [B,N-1] (CLS-row attention over nodes 1..N-1), node_mask [B,N] bool or None
    (False = not a node: it is never selected and its own hyperedge is empty). Top-k selection carries no gradient;
    the kept weights (softmax over the kept scores) do.
    """
    b, n, _ = nodes.shape
    xn = F.normalize(nodes.float(), dim=-1)
    scores = xn @ xn.transpose(1, 2)  # (B, N, N) cosine, S_ij
    scores[:, 0, 1:] = prior.float()  # S_0j = α_j
    eye = torch.eye(n, dtype=torch.bool, device=nodes.device)
    excluded = eye.expand(b, n, n).clone()
    excluded[:, 1:, 0] = True  # S_i0 = -inf for i >= 1
    if node_mask is not None:
        excluded |= ~node_mask.bool()[:, None, :]  # masked nodes are never selected
    scores = scores.masked_fill(excluded, float("-inf"))
    k = min(topk, n - 1)
    vals, idx = scores.topk(k, dim=-1)  # (B, N, k)
    kept = torch.isfinite(vals)
    vals = vals.masked_fill(~kept, torch.finfo(vals.dtype).min)
    weights = vals.softmax(dim=-1) * kept  # rows with no candidate stay 0
    w = torch.zeros_like(scores).scatter(-1, idx, weights)  # (B, N, N), W_ii = 0
    h = w + eye.to(w.dtype)  # H_ii = 1, H_ij = W_ij (j >= 1)
    col0 = torch.cat([h[:, :1, 0], w[:, 0, 1:]], dim=1)  # H_00 = 1, H_j0 = W_0j
    h = torch.cat([col0[:, :, None], h[:, :, 1:]], dim=2)
    if node_mask is not None:
        h = h * node_mask.to(h.dtype)[:, :, None]  # masked nodes own no hyperedge
    return h


class AceHgnn(nn.Module):
    """Refines the global token x0 by hypergraph message passing; returns v'0 [B,D], L2-normalised.

    ``fusion="replace"``: v'0 = norm(Y0) (reference). ``fusion="residual"``: v'0 = norm(x0 + gamma·Y0) with a
    zero-initialised scalar gamma, so the output equals x0 at step 0.
    """

    def __init__(self, dim: int, hidden: int = 128, topk: int = 5, fusion: str = "replace") -> None:
        super().__init__()
        if fusion not in ("replace", "residual"):
            raise ValueError(f"hgnn fusion {fusion!r}: expected 'replace' or 'residual'")
        self.topk, self.fusion = topk, fusion
        self.edge = BottleneckMlp(dim, hidden)  # φ_edge
        self.node = BottleneckMlp(dim, hidden)  # φ_node
        self.gamma = nn.Parameter(torch.zeros(())) if fusion == "residual" else None

    def forward(self, nodes: torch.Tensor, prior: torch.Tensor, node_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = hyperedge_incidence(nodes, prior, self.topk, node_mask).to(nodes.dtype)  # (B, N, N)
        edges = self.edge(h @ nodes)  # Ẽ = φ_edge(H·X)        (B, N, D)
        y0 = self.node(h[:, :, 0:1].transpose(1, 2) @ edges)[:, 0]  # Y0 = φ_node((Hᵀ·Ẽ)_0)  (B, D)
        if self.fusion == "residual":
            y0 = nodes[:, 0] + self.gamma * y0
        return F.normalize(y0, dim=-1)
