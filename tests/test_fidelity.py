"""Fidelity to the reference (docs/method.md#deviations-from-the-reference): train-mode dropout sites, token
averaging, resize truncation, single resampling for training, open_clip's text cleaning, the negative prompt is in
test_prompts.py. Expectations are written by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from ace_lora.data.prepare import _resize_shortest
from ace_lora.eval import common
from ace_lora.models import PRESETS
from ace_lora.models.dropout import active_dropout_sites
from ace_lora.models.tokenizer import clean_text, load_tokenizer, tokenize
from model_support import build_tiny, example_batch, randomise_adapter, write_vocab


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture
def dropping_tiny(monkeypatch):
    """The tiny preset with BERT's dropout at 0.1 (the demo preset has 0), so every BERT site exists."""
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(PRESETS["tiny"], text_dropout=0.1))


# ------------------------------------------------------------------------------------------ dropout sites

BERT = "text.transformer"
LORA_SITES = [
    f"{BERT}.encoder.layer.{i}.attention.self.{n}.lora_dropout" for i in (0, 1) for n in ("query", "key", "value")
] + [f"visual.trunk.blocks.{i}.attn.qkv.lora_dropout" for i in (0, 1)]
# the reference's train mode: BERT embeddings, each BERT layer's MLP output, the LoRA inputs; nothing in the ViT
REFERENCE_SITES = [
    f"{BERT}.embeddings.dropout",
    f"{BERT}.encoder.layer.0.output.dropout",
    f"{BERT}.encoder.layer.1.output.dropout",
]
BERT_ONLY_SITES = [f"{BERT}.encoder.layer.{i}.attention.{s}.dropout" for i in (0, 1) for s in ("self", "output")]


@pytest.mark.parametrize(
    "variant, expected", [("reference", REFERENCE_SITES), ("bert", REFERENCE_SITES + BERT_ONLY_SITES)]
)
def test_active_dropout_sites_per_variant(vocab, dropping_tiny, variant, expected):
    model = build_tiny(vocab, dropout_sites=variant)
    assert sorted(active_dropout_sites(model)) == sorted(expected + LORA_SITES)
    no_lora = build_tiny(vocab, dropout_sites=variant, lora={"dropout": 0.0})
    assert sorted(active_dropout_sites(no_lora)) == sorted(expected)


def _zero_reference_sites(model) -> None:
    """p = 0 at every site the reference has (LoRA input: lora.dropout 0; BERT embeddings and MLP output)."""
    bert = model.text.transformer
    bert.embeddings.dropout.p = 0.0
    for layer in bert.encoder.layer:
        layer.output.dropout.p = 0.0


def _two_train_passes(model):
    randomise_adapter(model)
    images, ids, mask = example_batch(model)
    model.train()
    with torch.no_grad():
        return model(images, ids, mask), model(images, ids, mask)


@pytest.mark.parametrize("preset", ["tiny", pytest.param("biomedclip", marks=pytest.mark.slow)])
def test_faithful_train_mode_is_deterministic_with_every_reference_site_at_zero(vocab, dropping_tiny, preset):
    if preset == "tiny":
        model = build_tiny(vocab, lora={"dropout": 0.0})  # default dropout_sites: reference
    else:  # random paper-size towers (BERT dropout 0.1 at every site of the preset)
        from ace_lora.config import LoraConfig, ModelConfig
        from ace_lora.models import build_model

        model = build_model(ModelConfig(preset="biomedclip", tokenizer=str(vocab), lora=LoraConfig(dropout=0.0)))
    _zero_reference_sites(model)
    assert active_dropout_sites(model) == []
    (i1, t1), (i2, t2) = _two_train_passes(model)
    assert torch.equal(i1, i2) and torch.equal(t1, t2)


def test_bert_variant_keeps_stochastic_attention_dropout(vocab, dropping_tiny):
    model = build_tiny(vocab, lora={"dropout": 0.0}, dropout_sites="bert")
    _zero_reference_sites(model)
    assert sorted(active_dropout_sites(model)) == sorted(BERT_ONLY_SITES)
    (i1, t1), (i2, t2) = _two_train_passes(model)
    assert torch.equal(i1, i2) and not torch.equal(t1, t2)  # the image tower has no dropout in either variant


def test_biomedclip_preset_sites_on_meta():
    """Paper size: 1 embedding + 12 MLP-output BERT sites, 24 x q/k/v LoRA sites in BERT, 12 fused qkv in the ViT."""
    from ace_lora.config import ModelConfig
    from ace_lora.models import build_model

    for variant, bert_sites in (("reference", 13), ("bert", 13 + 24)):
        model = build_model(ModelConfig(preset="biomedclip", dropout_sites=variant), device="meta")
        sites = active_dropout_sites(model)
        assert len([s for s in sites if s.endswith("lora_dropout")]) == 36 + 12
        assert len([s for s in sites if not s.endswith("lora_dropout")]) == bert_sites
        assert not [s for s in sites if s.startswith("visual.") and not s.endswith("lora_dropout")]


# ----------------------------------------------------------------------------------------- token average


class _NodesModel(torch.nn.Module):
    """text_nodes gives fixed unit nodes per prompt; text_global records what it receives."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def tokenize(self, texts):
        ids = torch.tensor([[1 + i, 1, 0] for i in range(len(texts))])
        return ids, (ids > 0).long()

    def text_nodes(self, ids, mask):
        first = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # prompt 0
        second = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.6, 0.8]]])  # prompt 1
        prior = torch.tensor([[0.2, 0.4], [0.6, 0.0]])
        return torch.cat([first, second]), prior, mask.bool()

    def text_global(self, nodes, prior, node_mask):
        self.seen.update(nodes=nodes, prior=prior, node_mask=node_mask)
        return nodes[:, 0] + nodes[:, 2]


def test_token_average_does_not_renormalise_the_averaged_nodes():
    model = _NodesModel()
    out = common.build_zero_shot_classifier(model, {"a": ["p", "q"]}, ["a"], ensemble="token_average")
    # position-wise means by hand: (1,0)+(0,1) -> (.5,.5); (0,1)+(0,1) -> (0,1); (1,0)+(.6,.8) -> (.8,.4)
    torch.testing.assert_close(model.seen["nodes"], torch.tensor([[[0.5, 0.5], [0.0, 1.0], [0.8, 0.4]]]))
    torch.testing.assert_close(model.seen["prior"], torch.tensor([[0.4, 0.2]]))
    assert model.seen["node_mask"].tolist() == [[True, True, False]]
    # the class row itself is normalised: (0.5+0.8, 0.5+0.4) / |.|
    torch.testing.assert_close(out[0], torch.tensor([1.3, 0.9]) / (1.3**2 + 0.9**2) ** 0.5)


# ------------------------------------------------------------------------------------------------ images


@pytest.mark.parametrize(
    "size_in, size_out",
    [((300, 451), (224, 336)), ((451, 300), (336, 224)), ((224, 500), (224, 500)), ((1000, 999), (224, 224))],
)
def test_cache_resize_truncates_the_long_side_like_torchvision(size_in, size_out):
    # 224 * 451 / 300 = 336.75: torchvision's Resize(224) gives 336 (int), rounding would give 337;
    # 224 * 1000 / 999 = 224.22 -> 224
    img = Image.new("L", size_in, 128)
    assert _resize_shortest(img, 224, Image.Resampling.BICUBIC).size == size_out


def test_cache_resize_matches_torchvision_resize():
    from torchvision import transforms as T

    for size_in in ((300, 451), (517, 389), (640, 481)):
        img = Image.new("L", size_in, 7)
        assert _resize_shortest(img, 224, Image.Resampling.BICUBIC).size == T.Resize(224)(img).size


def test_square_training_cache_then_train_transform_resamples_once_like_the_reference(vocab):
    """The reference's training transform: Resize((224, 224), bicubic) on the original. A square cache followed by
    our training transform gives the same tensor; the shortest-side cache resamples twice and does not."""
    from torchvision import transforms as T

    from ace_lora.models.biomedclip import build_image_transform

    preset = PRESETS["biomedclip"]
    reference = T.Compose(
        [
            T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(preset.mean, preset.std),
        ]
    )
    ours = build_image_transform(preset, train=True)
    original = Image.fromarray(np.random.default_rng(2).integers(0, 256, (451, 300), dtype=np.uint8)).convert("RGB")
    square = _resize_shortest(original, 224, Image.Resampling.BICUBIC, square=True)
    assert square.size == (224, 224)
    assert torch.equal(ours(square), reference(original))
    twice = ours(_resize_shortest(original, 224, Image.Resampling.BICUBIC))
    assert not torch.equal(twice, reference(original))


def test_training_transform_does_not_resample_a_cache_at_the_input_size(vocab):
    model = build_tiny(vocab)
    size = model.preset.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)  # noise: any resample shows
    x = model.image_transform(train=True)(Image.fromarray(pixels, mode="L"))
    mean, std = torch.tensor(model.preset.mean)[:, None, None], torch.tensor(model.preset.std)[:, None, None]
    expected = (torch.from_numpy(pixels).float().div(255).expand(3, -1, -1) - mean) / std
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("effusion &amp;lt; 2 cm", "effusion < 2 cm"),  # HTML entities unescaped twice
        ("  left\t\tpleural \n effusion  ", "left pleural effusion"),  # whitespace runs collapsed, stripped
        ("cafÃ© au lait", "café au lait"),  # mojibake (UTF-8 read as Latin-1) fixed by ftfy
        ("heart size &gt; normal", "heart size > normal"),
    ],
)
def test_clean_text_by_hand(raw, cleaned):
    assert clean_text(raw) == cleaned


def test_clean_text_agrees_with_open_clip():
    from open_clip.tokenizer import HFTokenizer, get_clean_fn

    oracle = get_clean_fn("whitespace")
    assert HFTokenizer.__init__.__defaults__[1] == "whitespace"  # BiomedCLIP's tokenizer uses the default clean
    for text in [
        "effusion &amp;lt; 2 cm",
        " a\u00a0b\u2003c ",
        "cafÃ© &amp;amp; co",
        "Findings:\r\n  none.",
        "no acute findings .",
    ]:
        assert clean_text(text) == oracle(text)


def test_biomedclip_preset_tokenises_cleaned_text(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<", "&", ";", "lt", "amp", "cafe", "2"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = load_tokenizer(tmp_path)
    assert PRESETS["biomedclip"].clean_text and not PRESETS["tiny"].clean_text
    ids, _ = tokenize(tok, ["&amp;lt; 2", "cafÃ©"], 6, clean=True)
    assert ids.tolist() == [[2, 5, 11, 3, 0, 0], [2, 10, 3, 0, 0, 0]]  # [CLS] < 2 [SEP]; [CLS] cafe [SEP]
    raw, _ = tokenize(tok, ["&amp;lt; 2"], 8)
    assert raw.tolist() == [[2, 6, 9, 7, 8, 7, 11, 3]]  # uncleaned: [CLS] & amp ; lt ; 2 [SEP]


def test_cache_then_eval_transform_equals_open_clip_preprocessing_of_the_original():
    """open_clip's BiomedCLIP preprocessing (resize shortest side 224, bicubic; centre crop) as the oracle: the cache
    (shortest side 224, truncated long side) followed by our eval transform gives the same tensor exactly."""
    from open_clip.transform import image_transform

    from ace_lora.models.biomedclip import build_image_transform

    preset = PRESETS["biomedclip"]
    oracle = image_transform(224, is_train=False, mean=preset.mean, std=preset.std)
    ours = build_image_transform(preset, train=False)
    rng = np.random.default_rng(1)
    for size in ((300, 451), (451, 300)):  # 336.75: a rounded cache (337) would shift the crop by half a pixel
        original = Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L")
        cache = _resize_shortest(original, 224, Image.Resampling.BICUBIC)
        assert torch.equal(ours(cache), oracle(original))


# ------------------------------------------------------------------------------------------------- docs


def test_method_doc_anchors_exist_and_no_spec_pointers_remain():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    headings = re.findall(r"^#{1,6} (.+)$", (root / "docs" / "method.md").read_text(), flags=re.MULTILINE)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    files = [
        root / "README.md",
        root / "params.yaml",
        *root.glob("configs/*.yaml"),
        *root.glob("docs/*.md"),
        *root.glob("ace_lora/**/*.py"),
        *root.glob("workflow/**/*"),
        *root.glob("benchmarks/*.py"),
        *root.glob("tests/*.py"),
    ]
    used = set()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"SPEC(\.md| §)", text), f"{path} points at the internal spec, not docs/method.md"
        used |= {(path.name, a) for a in re.findall(r"docs/method\.md#([\w\-]+)", text)}
    assert used, "nothing points at docs/method.md"
    missing = sorted((name, a) for name, a in used if a not in anchors)
    assert not missing, f"anchors not in docs/method.md: {missing}"
