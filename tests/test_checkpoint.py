"""Adapter files: save/load round trip, mismatch errors, and import of the official ACE_LoRA.pt layout
(docs/method.md#official-checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ace_lora.config import LossConfig, ModelConfig
from ace_lora.models import (
    AdapterError,
    build_from_official_checkpoint,
    build_model,
    import_official_checkpoint,
    load_adapter,
    load_adapter_weights,
    save_adapter,
)
from model_support import build_tiny, example_batch, randomise_adapter, tiny_cfg, write_vocab


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


def test_round_trip_rebuilds_the_same_model(vocab, tmp_path):
    model = build_tiny(vocab, loss=LossConfig(label_guided=False), hgnn={"fusion": "residual"})
    randomise_adapter(model, seed=3)
    with torch.no_grad():
        model.logit_scale.fill_(33.0)
    out = save_adapter(model, tmp_path / "adapter", extra={"step": 12})
    tensors = load_file(str(out / "adapter.safetensors"))
    meta = json.loads((out / "adapter.json").read_text())
    assert sum(t.numel() for t in tensors.values()) == model.parameter_breakdown()["total"]
    assert all(k.split(".")[0] in ("visual", "text", "logit_scale") or k.startswith("hgnn") for k in tensors)
    assert meta["preset"] == "tiny" and meta["model"]["tokenizer"] == str(vocab) and meta["extra"] == {"step": 12}
    assert meta["loss"]["label_guided"] is False and meta["model"]["hgnn"]["fusion"] == "residual"
    again = load_adapter(out)
    assert again.loss_cfg == model.loss_cfg and again.model_cfg == model.model_cfg
    images, ids, mask = example_batch(model)
    with torch.no_grad():
        for a, b in zip(model(images, ids, mask), again(images, ids, mask)):
            assert torch.equal(a, b)
    assert again.logit_scale.item() == 33.0 and again.logit_scale.requires_grad


def test_merged_model_is_not_saved(vocab, tmp_path):
    model = build_tiny(vocab)
    model.merge_lora()
    with pytest.raises(AdapterError, match="unmerge"):
        save_adapter(model, tmp_path)


def test_adapter_of_another_preset_or_layout_is_refused(vocab, tmp_path):
    out = save_adapter(build_tiny(vocab), tmp_path / "adapter")
    paper = build_model(ModelConfig(preset="biomedclip"), device="meta")
    with pytest.raises(AdapterError, match="preset 'tiny'.*preset 'biomedclip'"):
        load_adapter_weights(paper, out)
    with pytest.raises(AdapterError, match="preset"):
        load_adapter(out, model_cfg=ModelConfig(preset="biomedclip"))
    rank8 = build_tiny(vocab, lora={"rank": 8})
    with pytest.raises(AdapterError, match="shapes differ"):
        load_adapter_weights(rank8, out)
    text_only = build_tiny(vocab, hgnn={"towers": "text"})
    with pytest.raises(AdapterError, match="unexpected"):
        load_adapter_weights(text_only, out)
    with pytest.raises(AdapterError, match="adapter.json"):
        load_adapter(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------- official layout


def official_checkpoint(preset_layers: tuple[int, int], width: int, dim: int, seed: int = 0, r: int = 4) -> dict:
    """A file in the official layout: nested dicts, layer_0.. = text layers, then image blocks."""
    g = torch.Generator().manual_seed(seed)
    n_text, n_image = preset_layers
    weights = {}
    for i in range(n_text + n_image):
        weights[f"layer_{i}"] = {
            f"{t}_proj": {
                "w_lora_A": torch.randn(r, width, generator=g),
                "w_lora_B": torch.randn(width, r, generator=g),
            }
            for t in "qkv"
        }
    for name in ("img_edge_adapter", "img_node_adapter", "text_edge_adapter", "text_node_adapter"):
        weights[name] = {
            "down.weight": torch.randn(128, dim, generator=g),
            "down.bias": torch.randn(128, generator=g),
            "up.weight": torch.randn(dim, 128, generator=g),
            "up.bias": torch.randn(dim, generator=g),
        }
    weights["logit_scale"] = torch.tensor(61.5)
    return {
        "weights": weights,
        "metadata": {"r": r, "topk": 5, "params": ["q", "k", "v"], "position": "all", "encoder": "both"},
    }


def _check_imported(model, official) -> None:
    w = official["weights"]
    n_text = model.preset.text_layers
    bert = model.text.transformer.encoder.layer
    blocks = model.visual.trunk.blocks
    assert torch.equal(bert[1].attention.self.key.lora_A["k"], w["layer_1"]["k_proj"]["w_lora_A"])
    assert torch.equal(bert[0].attention.self.value.lora_B["v"], w["layer_0"]["v_proj"]["w_lora_B"])
    assert torch.equal(blocks[0].attn.qkv.lora_A["q"], w[f"layer_{n_text}"]["q_proj"]["w_lora_A"])
    assert torch.equal(blocks[1].attn.qkv.lora_B["v"], w[f"layer_{n_text + 1}"]["v_proj"]["w_lora_B"])
    assert torch.equal(model.hgnn_image.edge.down.weight, w["img_edge_adapter"]["down.weight"])
    assert torch.equal(model.hgnn_text.node.up.bias, w["text_node_adapter"]["up.bias"])
    assert model.logit_scale.item() == pytest.approx(61.5)


def test_import_official_checkpoint_tiny(vocab, tmp_path):
    official = official_checkpoint((2, 2), 64, 64)
    path = tmp_path / "ACE_LoRA.pt"
    torch.save(official, path)
    cfg = tiny_cfg(vocab)
    out = import_official_checkpoint(path, tmp_path / "adapter", preset="tiny", model_cfg=cfg)
    model = load_adapter(out)
    _check_imported(model, official)
    assert json.loads((out / "adapter.json").read_text())["extra"]["official_metadata"]["r"] == 4
    _check_imported(build_from_official_checkpoint(path, cfg), official)


def test_import_refuses_mismatch_and_pickled_code(vocab, tmp_path):
    cfg = tiny_cfg(vocab)
    bad_rank = tmp_path / "r8.pt"
    torch.save(official_checkpoint((2, 2), 64, 64, r=8), bad_rank)
    with pytest.raises(AdapterError, match="r=8"):
        import_official_checkpoint(bad_rank, tmp_path / "a", preset="tiny", model_cfg=cfg)
    evil = tmp_path / "evil.pt"
    torch.save({"weights": {}, "metadata": {"hook": LossConfig()}}, evil)
    with pytest.raises(AdapterError, match="weights_only"):
        import_official_checkpoint(evil, tmp_path / "b", preset="tiny", model_cfg=cfg)


@pytest.mark.slow
def test_import_official_checkpoint_paper_size(tmp_path):
    official = official_checkpoint((12, 12), 768, 512)
    path = tmp_path / "ACE_LoRA.pt"
    torch.save(official, path)
    out = import_official_checkpoint(path, tmp_path / "adapter")
    tensors = load_file(str(out / "adapter.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == 969_217
    stored = json.loads((out / "adapter.json").read_text())["model"]
    assert stored["preset"] == "biomedclip" and stored["checkpoint"].startswith("hf-hub:microsoft/BiomedCLIP")
    model = build_model(ModelConfig(preset="biomedclip", tokenizer=str(write_vocab(tmp_path / "v"))))
    load_adapter_weights(model, out)
    _check_imported(model, official)
