"""Architecture presets, declared as data.

``biomedclip`` is the paper-size BiomedCLIP architecture (docs/method.md#base-model); ``tiny`` is the demo/test
architecture (README, "What the demo shows").
Both presets share one code path: a timm ViT image tower with a linear head on the CLS token, and an HF ``BertModel``
text tower (no pooler) with a two-layer projection MLP on the CLS position. Images always have 3 channels (grayscale
inputs are converted to RGB in preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
# open_clip's default initial logit scale, log(1 / 0.07): used when the towers are randomly initialised.
DEFAULT_LOG_LOGIT_SCALE = 2.659260036932778


@dataclass(frozen=True)
class ModelPreset:
    """Sizes of both towers, the joint space and the preprocessing of one architecture."""

    name: str
    # image tower (timm VisionTransformer)
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    # text tower (HF BertModel)
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    max_position_embeddings: int
    context_length: int
    text_dropout: float  # BERT hidden/attention dropout (active in train mode only)
    # heads and joint space
    embed_dim: int
    text_proj_hidden: int
    #: clean texts before tokenising as open_clip's tokenizer does (ftfy, HTML unescape, whitespace); see tokenizer.py
    clean_text: bool = False
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    in_chans: int = 3

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_tokens(self) -> int:
        """Image nodes N = patches + CLS."""
        return self.num_patches + 1

    def timm_kwargs(self) -> dict:
        """Keyword arguments of ``timm.models.vision_transformer.VisionTransformer``."""
        return dict(
            img_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            embed_dim=self.vision_width,
            depth=self.vision_layers,
            num_heads=self.vision_heads,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
        )

    def bert_kwargs(self) -> dict:
        """Keyword arguments of ``transformers.BertConfig``."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            intermediate_size=self.text_intermediate,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=2,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            pad_token_id=0,
            hidden_dropout_prob=self.text_dropout,
            attention_probs_dropout_prob=self.text_dropout,
        )


PRESETS: dict[str, ModelPreset] = {
    # BiomedCLIP: ViT-B/16 at 224 + PubMedBERT-base (context 256), joint space 512, text MLP 768 -> 640 -> 512.
    "biomedclip": ModelPreset(
        name="biomedclip",
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        vocab_size=30522,
        text_width=768,
        text_layers=12,
        text_heads=12,
        text_intermediate=3072,
        max_position_embeddings=512,
        context_length=256,
        text_dropout=0.1,
        embed_dim=512,
        text_proj_hidden=640,
        clean_text=True,
    ),
    # demo: ViT on 64x64 images, patch 8, depth 2, width 64, 2 heads; BERT 2 layers, hidden 64, 2 heads,
    # context 40. The embedding table holds up to 4096 word-level tokens (the demo vocabulary must fit).
    "tiny": ModelPreset(
        name="tiny",
        image_size=64,
        patch_size=8,
        vision_width=64,
        vision_layers=2,
        vision_heads=2,
        vocab_size=4096,
        text_width=64,
        text_layers=2,
        text_heads=2,
        text_intermediate=256,
        max_position_embeddings=64,
        context_length=40,
        text_dropout=0.0,
        embed_dim=64,
        text_proj_hidden=64,
    ),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; unknown names raise ``KeyError`` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
