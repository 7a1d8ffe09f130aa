"""Label-guided InfoNCE (docs/method.md#label-guided-infonce): plain cases, masked denominators by hand, and the
global batch across ranks."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from ace_lora.losses import LabelGuidedInfoNCELoss, label_mask


def _emb(b=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(torch.randn(b, d, generator=g), dim=-1)


def hand_loss(img, txt, scale, labels=None):
    """docs/method.md#label-guided-infonce written out:
    1/(2B) Σ_i [-log(e^{s<v_i,t_i>} / Σ_j M_ij e^{s<v_i,t_j>}) + (same for t_i vs v_j)]."""
    b = img.shape[0]
    total = 0.0
    for i in range(b):
        for a, c in ((img, txt), (txt, img)):
            den = 0.0
            for j in range(b):
                keep = i == j or labels is None or bool((labels[i] != labels[j]).any())
                if keep:
                    den += math.exp(scale * float(a[i] @ c[j]))
            total += -(scale * float(a[i] @ c[i]) - math.log(den))
    return total / (2 * b)


def test_all_distinct_labels_equal_plain_infonce():
    img, txt = _emb()
    labels = torch.eye(6, 14)
    loss = LabelGuidedInfoNCELoss()
    guided = loss(img, txt, torch.tensor(10.0), labels)["loss"]
    plain = loss(img, txt, torch.tensor(10.0), None)["loss"]
    logits = 10.0 * img @ txt.t()
    target = torch.arange(6)
    symmetric = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    torch.testing.assert_close(guided, plain)
    torch.testing.assert_close(plain, symmetric)
    assert guided.item() == pytest.approx(hand_loss(img, txt, 10.0), rel=1e-5)


def test_duplicated_labels_remove_negatives_from_denominators():
    img, txt = _emb()
    labels = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    out = LabelGuidedInfoNCELoss()(img, txt, torch.tensor(7.5), labels)
    assert out["loss"].item() == pytest.approx(hand_loss(img, txt, 7.5, labels), rel=1e-5)
    assert out["loss"].item() < LabelGuidedInfoNCELoss()(img, txt, torch.tensor(7.5))["loss"].item()
    torch.testing.assert_close(out["loss"], (out["loss_i2t"] + out["loss_t2i"]) / 2)
    off = LabelGuidedInfoNCELoss(label_guided=False)(img, txt, torch.tensor(7.5), labels)["loss"]
    assert off.item() == pytest.approx(hand_loss(img, txt, 7.5), rel=1e-5)


def test_fully_masked_row_contributes_zero():
    img, txt = _emb(b=2)
    same = torch.zeros(2, 14)
    assert LabelGuidedInfoNCELoss()(img, txt, torch.tensor(20.0), same)["loss"].item() == pytest.approx(0, abs=1e-7)
    img3, txt3 = _emb(b=3)
    labels = torch.tensor([[1.0], [1.0], [0.0]])  # rows 0/1 see only each other: masked; row 2 sees everyone
    mask = label_mask(labels, labels)
    assert mask.tolist() == [[True, False, True], [False, True, True], [True, True, True]]
    out = LabelGuidedInfoNCELoss()(img3, txt3, torch.tensor(5.0), labels)["loss"]
    assert out.item() == pytest.approx(hand_loss(img3, txt3, 5.0, labels), rel=1e-5)


def test_gradient_reaches_embeddings_and_scale():
    img, txt = _emb()
    img.requires_grad_(True)
    scale = torch.nn.Parameter(torch.tensor(14.29))
    LabelGuidedInfoNCELoss()(img, txt, scale, torch.eye(6))["loss"].backward()
    assert img.grad.abs().sum() > 0 and scale.grad is not None and scale.grad != 0


# -------------------------------------------------------------------------------------------- 2 ranks


def _full_batch():
    img, txt = _emb(b=8, d=6, seed=3)
    labels = torch.tensor([[1, 0], [0, 1], [2, 0], [0, 0], [1, 0], [3, 3], [0, 0], [2, 2]])  # duplicates span ranks
    return img, txt, labels


def _rank_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        img, txt, labels = _full_batch()
        b = img.shape[0] // world
        local_img = img[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        local_txt = txt[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        scale = torch.nn.Parameter(torch.tensor(9.0))
        out = LabelGuidedInfoNCELoss()(local_img, local_txt, scale, labels[rank * b : (rank + 1) * b])
        out["loss"].backward()
        torch.save(
            {
                "loss": out["loss"].detach(),
                "img_grad": local_img.grad,
                "txt_grad": local_txt.grad,
                "scale_grad": scale.grad,
            },
            os.path.join(folder, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_features_and_labels(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.start_processes(_rank_worker, args=(world, str(tmp_path)), nprocs=world, start_method="spawn")
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    img, txt, labels = _full_batch()
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.nn.Parameter(torch.tensor(9.0))
    full = LabelGuidedInfoNCELoss()(img, txt, scale, labels)["loss"]
    full.backward()
    # the global loss is the mean of the ranks' losses (DDP averages their gradients)
    torch.testing.assert_close(sum(p["loss"] for p in parts) / world, full.detach())
    b = img.shape[0] // world
    for r, p in enumerate(parts):  # gradient of the local shard = world x gradient of the global mean loss
        torch.testing.assert_close(p["img_grad"], world * img.grad[r * b : (r + 1) * b], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p["txt_grad"], world * txt.grad[r * b : (r + 1) * b], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sum(p["scale_grad"] for p in parts) / world, scale.grad)
