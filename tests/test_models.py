"""AceLoraModel on the tiny preset: shapes, LoRA invariants, priors, preprocessing, open_clip as an oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ace_lora.config import LossConfig, ModelConfig
from ace_lora.models import build_model, describe_model, get_preset, is_adapter_name
from ace_lora.models.lora import LoraLinear
from model_support import build_tiny, example_batch, randomise_adapter, write_vocab


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


def test_shapes_and_normalisation(vocab):
    model = build_tiny(vocab)
    images, ids, mask = example_batch(model)
    p = model.preset
    assert ids.shape == mask.shape == (4, p.context_length)
    assert torch.equal(mask, (ids != 0).long())
    with torch.no_grad():
        nodes, prior = model.image_nodes(images)
        assert nodes.shape == (4, p.image_tokens, p.embed_dim) and prior.shape == (4, p.num_patches)
        tnodes, tprior, node_mask = model.text_nodes(ids, mask)
        assert tnodes.shape == (4, p.context_length, p.embed_dim) and tprior.shape == (4, p.context_length - 1)
        assert node_mask.dtype == torch.bool and node_mask.all()  # text_nodes=all (reference)
        img, txt = model(images, ids, mask)
    for t in (nodes, tnodes, img, txt):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]))
    assert img.shape == txt.shape == (4, p.embed_dim)


def test_only_adapter_parameters_train(vocab):
    model = build_tiny(vocab)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_name(n) for n in trainable)
    assert {n for n in dict(model.named_parameters()) if is_adapter_name(n)} == trainable
    p = model.preset
    lora = 3 * 2 * model.model_cfg.lora.rank * (p.vision_layers * p.vision_width + p.text_layers * p.text_width)
    hgnn = 2 * 2 * (2 * p.embed_dim * 128 + 128 + p.embed_dim)
    assert model.parameter_breakdown() == {"lora": lora, "hgnn": hgnn, "logit_scale": 1, "total": lora + hgnn + 1}
    frozen = build_tiny(vocab, LossConfig(learnable_scale=False))
    assert not frozen.logit_scale.requires_grad and frozen.parameter_breakdown()["logit_scale"] == 0


def test_paper_preset_counts_969217():
    model = build_model(ModelConfig(preset="biomedclip"), device="meta")
    assert model.parameter_breakdown() == {"lora": 442_368, "hgnn": 526_848, "logit_scale": 1, "total": 969_217}
    assert "969,217" in describe_model("biomedclip")


def test_zero_init_lora_equals_base_model_exactly(vocab):
    base = build_tiny(vocab, lora={"enabled": False})
    lora = build_tiny(vocab)
    assert not any(isinstance(m, LoraLinear) for m in base.modules())
    assert sum(isinstance(m, LoraLinear) for m in lora.modules()) == 2 + 2 * 3  # fused ViT qkv; BERT q, k, v
    images, ids, mask = example_batch(lora)
    with torch.no_grad():
        for a, b in zip(base(images, ids, mask), lora(images, ids, mask)):
            assert torch.equal(a, b)
        assert torch.equal(base.image_nodes(images)[0], lora.image_nodes(images)[0])
        assert torch.equal(base.text_nodes(ids, mask)[0], lora.text_nodes(ids, mask)[0])


def test_merge_equals_unmerged_and_unmerge_restores(vocab):
    model = build_tiny(vocab, lora={"targets": ["q", "k", "v", "o"]})
    randomise_adapter(model)
    images, ids, mask = example_batch(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        before = model(images, ids, mask)
        model.eval()
        assert not model.lora_merged  # eval() never merges
        model.merge_lora()
        assert model.lora_merged
        after = model(images, ids, mask)
        changed = [n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
        assert changed
        model.unmerge_lora()
        again = model(images, ids, mask)
    for a, b, c in zip(before, after, again):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(c, a, atol=1e-6, rtol=0)
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)


ADAPTER = 4 * 64 + 64 * 4  # one tiny-preset adapter: A [4, 64] + B [64, 4]


@pytest.mark.parametrize(
    "lora, adapters",
    [
        ({}, 12),  # q, k, v x 2 layers x 2 towers
        ({"targets": ["q", "v"]}, 8),
        ({"towers": ["image"]}, 6),
        ({"layers": [1]}, 6),
        ({"targets": ["o"]}, 4),
        ({"enabled": False}, 0),
    ],
)
def test_lora_variants_count(vocab, lora, adapters):
    model = build_tiny(vocab, lora=lora)
    assert model.parameter_breakdown()["lora"] == adapters * ADAPTER


def test_lora_init_independent_versus_shared(vocab):
    ind = build_tiny(vocab)
    shared = build_tiny(vocab, lora={"init": "shared"})

    def a_of(model, layer):
        return model.visual.trunk.blocks[layer].attn.qkv.lora_A["q"], model.text.transformer.encoder.layer[
            layer
        ].attention.self.query.lora_A["q"]

    assert not torch.equal(a_of(ind, 0)[0], a_of(ind, 1)[0])
    assert not torch.equal(a_of(ind, 0)[1], a_of(ind, 1)[1])
    assert torch.equal(a_of(shared, 0)[0], a_of(shared, 1)[0])  # the reference quirk
    assert torch.equal(a_of(shared, 0)[1], a_of(shared, 1)[1])
    qkv = shared.visual.trunk.blocks[0].attn.qkv
    assert not torch.equal(qkv.lora_A["q"], qkv.lora_A["k"])
    assert all(torch.count_nonzero(b) == 0 for b in qkv.lora_B.values())
    # same seed -> same model
    again = build_tiny(vocab)
    for (n, p), (_, q) in zip(ind.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_lora_dropout_only_in_train_mode(vocab):
    model = build_tiny(vocab, lora={"dropout": 0.5})
    randomise_adapter(model)
    images, _, _ = example_batch(model)
    with torch.no_grad():
        model.eval()
        e1, e2 = model.encode_image(images), model.encode_image(images)
        model.train()
        t1, t2 = model.encode_image(images), model.encode_image(images)
    assert torch.equal(e1, e2) and not torch.equal(t1, t2)


def _reference_attention_rows(model, images, ids, mask):
    """Head-averaged CLS rows from the libraries' own (eager) attention maps."""
    from timm.utils import AttentionExtract

    attn = model.visual.trunk.blocks[-1].attn
    attn.fused_attn = False  # timm computes the softmax explicitly; AttentionExtract reads attn_drop's output
    last = len(model.visual.trunk.blocks) - 1
    extract = AttentionExtract(model.visual.trunk, names=[f"blocks.{last}.attn.attn_drop"], method="hook")
    with torch.no_grad():
        maps = list(extract(images).values())[0]  # (B, H, N, N)
        model.image_prior_reader.read("softmax")  # drop the captured tensors
        bert = model.text.transformer
        bert.set_attn_implementation("eager")
        out = bert(input_ids=ids, attention_mask=mask, output_attentions=True)
        model.text_prior_reader.read("softmax", mask)
    attn.fused_attn = True
    bert.set_attn_implementation("sdpa")
    return maps.mean(1)[:, 0, 1:], out.attentions[-1].mean(1)[:, 0, 1:]


def test_attention_prior_matches_library_attention_maps(vocab):
    model = build_tiny(vocab, hgnn={"prior": "softmax"})
    randomise_adapter(model)  # the prior must come from the LoRA-adapted q/k
    images, ids, mask = example_batch(model)
    with torch.no_grad():
        _, img_prior = model.image_nodes(images)
        _, txt_prior, _ = model.text_nodes(ids, mask)
    ref_img, ref_txt = _reference_attention_rows(model, images, ids, mask)
    torch.testing.assert_close(img_prior, ref_img, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(txt_prior, ref_txt, atol=1e-5, rtol=1e-4)
    assert (txt_prior[mask[:, 1:] == 0] < 1e-6).all()


def test_reference_prior_kinds(vocab):
    model = build_tiny(vocab)  # prior=reference: image logits, text softmax
    images, ids, mask = example_batch(model)
    with torch.no_grad():
        _, img_prior = model.image_nodes(images)
        _, txt_prior, _ = model.text_nodes(ids, mask)
    assert (img_prior < 0).any()  # pre-softmax logits can be negative
    assert (txt_prior >= 0).all() and (txt_prior.sum(-1) <= 1 + 1e-5).all()


def test_hgnn_variants(vocab):
    images_model = build_tiny(vocab, hgnn={"towers": "none"})
    images, ids, mask = example_batch(images_model)
    with torch.no_grad():
        img, txt = images_model(images, ids, mask)
        nodes, _ = images_model.image_nodes(images)
        tnodes, _, _ = images_model.text_nodes(ids, mask)
    assert torch.equal(img, nodes[:, 0]) and torch.equal(txt, tnodes[:, 0])
    assert images_model.parameter_breakdown()["hgnn"] == 0
    residual = build_tiny(vocab, hgnn={"fusion": "residual", "text_nodes": "content"})
    with torch.no_grad():
        img_r, txt_r = residual(images, ids, mask)
        _, _, node_mask = residual.text_nodes(ids, mask)
    torch.testing.assert_close(img_r, nodes[:, 0])  # gamma = 0: the pretrained alignment at step 0
    torch.testing.assert_close(txt_r, tnodes[:, 0])
    sep = residual.tokenizer.sep_token_id
    assert not node_mask[ids == sep].any() and not node_mask[mask == 0].any() and node_mask[:, 0].all()
    assert residual.parameter_breakdown()["hgnn"] == 66_304 + 2  # + one gamma per tower
    image_only = build_tiny(vocab, hgnn={"towers": "image"})
    assert image_only.hgnn_text is None and image_only.hgnn_image is not None


@pytest.mark.parametrize("hgnn", [{"text_nodes": "content"}, {"towers": "image"}, {"towers": "none"}])
def test_padding_columns_are_skipped_when_no_padding_is_a_node(vocab, hgnn):
    model = build_tiny(vocab, hgnn=hgnn)
    randomise_adapter(model)
    ids, mask = model.tokenize(["left pleural effusion .", "no pneumothorax", "there is small right effusion"])
    longest = int(mask.sum(1).max())
    assert longest < ids.shape[1]
    with torch.no_grad():
        nodes, prior, node_mask = model.text_nodes(ids, mask)
        txt = model.encode_text(ids, mask)
        full = F.normalize(model.text.forward_tokens(ids, mask), dim=-1)  # every column computed
        full_prior = model.text_prior_reader.read(model._prior_kind("text"), mask)
        full_node_mask = mask.bool() & (ids != model.tokenizer.sep_token_id)
        full_node_mask[:, 0] = True
        full_txt = model.text_global(full, full_prior, full_node_mask)
    assert nodes.shape[1] == longest and prior.shape[1] == longest - 1 and node_mask.shape[1] == longest
    torch.testing.assert_close(nodes, full[:, :longest], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prior, full_prior[:, : longest - 1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(txt, full_txt, atol=1e-6, rtol=1e-5)
    reference = build_tiny(vocab)  # text_nodes=all with a text HGNN: padding positions are nodes
    with torch.no_grad():
        assert reference.text_nodes(ids, mask)[0].shape[1] == ids.shape[1]


def test_gradients_reach_every_adapter_parameter(vocab):
    from ace_lora.losses import LabelGuidedInfoNCELoss

    model = build_tiny(vocab)
    randomise_adapter(model)
    model.train()
    images, ids, mask = example_batch(model)
    out = LabelGuidedInfoNCELoss()(*model(images, ids, mask), model.logit_scale, torch.eye(4, 14))
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_bf16_autocast_forward(vocab):
    model = build_tiny(vocab)
    images, ids, mask = example_batch(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        img, txt = model(images, ids, mask)
    with torch.no_grad():
        ref_img, ref_txt = model(images, ids, mask)
    torch.testing.assert_close(img.float(), ref_img, atol=5e-2, rtol=0)
    torch.testing.assert_close(txt.float(), ref_txt, atol=5e-2, rtol=0)


def test_image_transform_grayscale_to_rgb(vocab):
    model = build_tiny(vocab)
    gray = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100), dtype=np.uint8), mode="L")
    for train in (False, True):
        x = model.image_transform(train)(gray)
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        assert torch.equal(x[0] * 0, x[1] * 0)
    p = get_preset("tiny")
    assert p.in_chans == 3 and get_preset("biomedclip").image_tokens == 197


def test_tokenizer_pads_and_truncates(vocab):
    model = build_tiny(vocab)
    ids, mask = model.tokenize(["left effusion", "effusion " * 100])
    assert ids.shape == (2, 40)
    assert ids[0, 0] == model.tokenizer.cls_token_id and ids[0, 3] == model.tokenizer.sep_token_id
    assert mask[0].sum() == 4 and mask[1].all() and ids[1, -1] == model.tokenizer.sep_token_id


def test_missing_tiny_vocab_or_tokenizer_is_a_clear_error(monkeypatch, tmp_path):
    from ace_lora.models import ace_lora as module

    monkeypatch.setattr(module, "TINY_VOCAB_FILE", tmp_path / "absent.txt")
    with pytest.raises(FileNotFoundError, match="tiny_vocab|model.tokenizer"):
        build_model(ModelConfig(preset="tiny"))


# ------------------------------------------------------------------------------------ open_clip oracle


def _open_clip_model(preset_name: str, folder):
    """CustomTextCLIP with the preset's architecture, built offline (pretrained=None, pretrained_hf=False)."""
    import timm
    from open_clip.model import CustomTextCLIP
    from transformers import BertConfig

    preset = get_preset(preset_name)
    if preset_name == "biomedclip":
        timm_name = "vit_base_patch16_224"
    else:
        timm_name = "ace_lora_test_tiny_vit"
        if timm_name not in timm.list_models(timm_name):
            from timm.models import register_model

            def ace_lora_test_tiny_vit(pretrained=False, **kwargs):
                args = {
                    k: v for k, v in get_preset("tiny").timm_kwargs().items() if k not in ("num_classes", "global_pool")
                }
                return timm.create_model("vit_base_patch16_224", pretrained=False, **args)

            register_model(ace_lora_test_tiny_vit)
    bert_dir = folder / "bert"
    BertConfig(**preset.bert_kwargs()).save_pretrained(bert_dir)  # a local config folder: nothing from the hub
    torch.manual_seed(123)
    model = CustomTextCLIP(
        embed_dim=preset.embed_dim,
        vision_cfg=dict(
            timm_model_name=timm_name,
            timm_model_pretrained=False,
            timm_pool="",
            timm_proj="linear",
            image_size=preset.image_size,
        ),
        text_cfg=dict(
            hf_model_name=str(bert_dir),
            hf_model_pretrained=False,
            hf_proj_type="mlp",
            hf_pooler_type="cls_last_hidden_state_pooler",
            context_length=preset.context_length,
        ),
    )
    assert preset.text_proj_hidden == (preset.text_width + preset.embed_dim) // 2, (
        "open_clip's text MLP width (mean of in and out) must equal the preset's for this oracle"
    )
    return model.eval()


@pytest.mark.parametrize("preset", ["tiny", pytest.param("biomedclip", marks=pytest.mark.slow)])
def test_open_clip_oracle_same_embeddings(preset, tmp_path, vocab):
    oracle = _open_clip_model(preset, tmp_path)
    ckpt = tmp_path / "ckpt"
    write_vocab(ckpt)
    torch.save(oracle.state_dict(), ckpt / "open_clip_pytorch_model.bin")
    model = build_model(ModelConfig(preset=preset, checkpoint=str(ckpt), init_seed=7))  # tokenizer: ckpt folder
    p = model.preset
    assert model.logit_scale.item() == pytest.approx(float(oracle.logit_scale.detach().exp()))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, p.image_size, p.image_size, generator=g)
    ids, mask = model.tokenize(["left pleural effusion .", "no pneumothorax"])
    with torch.no_grad():
        want_img = F.normalize(oracle.encode_image(images), dim=-1)
        want_txt = F.normalize(oracle.encode_text(ids), dim=-1)
        img_nodes, _ = model.image_nodes(images)
        txt_nodes, _, _ = model.text_nodes(ids, mask)
    torch.testing.assert_close(img_nodes[:, 0], want_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt_nodes[:, 0], want_txt, atol=1e-5, rtol=0)


def test_checkpoint_errors_name_the_files(tmp_path, monkeypatch):
    from ace_lora.models.biomedclip import load_open_clip_state_dict, resolve_checkpoint_file

    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        resolve_checkpoint_file(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        resolve_checkpoint_file("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin and vocab.txt"):
        build_model(
            ModelConfig(
                preset="biomedclip", checkpoint="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
            )
        )
    model = build_model(ModelConfig(preset="biomedclip"), device="meta")
    with pytest.raises(ValueError, match="missing"):
        load_open_clip_state_dict(model, {"visual.trunk.cls_token": torch.zeros(1, 1, 768)})
    (tmp_path / "evil.bin").write_bytes(b"not a pickle")
    from ace_lora.models.biomedclip import read_state_dict

    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "evil.bin")
    assert json.dumps(describe_model("tiny"))


def test_tokenizer_from_a_vocab_file(vocab):
    from ace_lora.models.tokenizer import load_tokenizer, tokenize

    tok = load_tokenizer(vocab / "vocab.txt")
    ids, mask = tokenize(tok, "Left pleural effusion.", 8)
    assert ids.tolist() == [[2, 6, 8, 9, 25, 3, 0, 0]] and mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0]]
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(vocab.parent)  # a folder without vocab.txt


def test_default_tiny_vocabulary_is_shipped():
    from ace_lora.models.tokenizer import TINY_VOCAB_FILE

    assert TINY_VOCAB_FILE.is_file(), "the tiny preset's vocabulary ships with the package"
    model = build_model(ModelConfig(preset="tiny"))
    ids, mask = model.tokenize(["no acute findings ."])
    assert ids.shape == (1, 40) and ids[0, 0] == model.tokenizer.cls_token_id and mask.sum() >= 3
    assert model.model_cfg.tokenizer is None  # resolved at build time, not frozen into adapter.json
