"""BiomedCLIP towers (timm ViT + HF BERT, docs/method.md#base-model), preprocessing and open_clip checkpoint loading.

The towers are built from a :class:`~ace_lora.models.presets.ModelPreset` with random weights; an open_clip
BiomedCLIP checkpoint (a local file or folder, or ``hf-hub:<repo>`` when online) is then copied in after its key set
and shapes are checked. Module names follow open_clip (``visual.trunk``, ``visual.head.proj``, ``text.transformer``,
``text.proj``) so checkpoint keys map one to one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.models.dropout import Dropout, dropout_matmul
from ace_lora.models.presets import ModelPreset

CHECKPOINT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# checkpoint keys that older transformers versions stored and that carry no weights of the towers
_IGNORED_KEY_SUFFIXES = ("embeddings.position_ids",)


class ImageTower(nn.Module):
    """timm ViT trunk + ``Linear(width -> embed, bias=False)`` applied to every token (CLS = the global one)."""

    def __init__(self, preset: ModelPreset) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(**preset.timm_kwargs())
        self.head = nn.ModuleDict({"proj": nn.Linear(preset.vision_width, preset.embed_dim, bias=False)})

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] -> projected, unnormalised tokens [B, 1+P, embed] (index 0 = CLS).

        Attention is timm's fused SDPA, except in a CPU bf16-autocast pass that records gradients: there the CPU
        flash kernel's bf16 backward is about 1.6x slower per block than timm's explicit attention
        (``timm``'s own ``fused_attn`` switch, set for this call only).
        """
        if not (
            images.device.type == "cpu"
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ):
            return self.head["proj"](self.trunk.forward_features(images))
        attentions = [block.attn for block in self.trunk.blocks]
        fused = [attn.fused_attn for attn in attentions]
        try:
            for attn in attentions:
                attn.fused_attn = False
            tokens = self.trunk.forward_features(images)
        finally:
            for attn, value in zip(attentions, fused):
                attn.fused_attn = value
        return self.head["proj"](tokens)


BERT_ATTENTION = "ace_lora_sdpa"


def _bert_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """BERT self-attention, [B,H,L,d] in, [B,L,H,d] out: fused SDPA, or with dropout on the probabilities (train
    mode) softmax then :func:`dropout_matmul` (SDPA has no fused CPU kernel with dropout and draws its mask slowly)."""
    if dropout == 0:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling)
    else:
        scale = scaling or query.shape[-1] ** -0.5
        scores = torch.matmul(query * scale, key.transpose(-1, -2))  # scaling q: 4x fewer elements than scores
        if attention_mask is not None:
            scores = (
                scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                if attention_mask.dtype == torch.bool
                else scores + attention_mask
            )
        out = dropout_matmul(scores.softmax(dim=-1), value, dropout)
    return out.transpose(1, 2).contiguous(), None


def register_bert_attention() -> None:
    """Register :func:`_bert_attention` (and SDPA's mask format) under ``BERT_ATTENTION`` with transformers."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(BERT_ATTENTION, _bert_attention)
    AttentionMaskInterface.register(BERT_ATTENTION, sdpa_mask)


DROPOUT_SITES = ("reference", "bert")


class TextTower(nn.Module):
    """HF ``BertModel`` without pooler + ``Linear -> GELU -> Linear`` (no biases) applied to every position.

    ``dropout_sites`` (train mode; docs/method.md#dropout-sites): ``"reference"`` keeps BERT's embedding dropout and
    each layer's MLP-output dropout and sets the attention-probability and attention-output dropouts to p = 0, as
    the reference's LoRA attention (which replaces BERT's attention block) computes; ``"bert"`` keeps all four of
    HF BERT's sites.
    """

    def __init__(self, preset: ModelPreset, dropout_sites: str = "reference") -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        if dropout_sites not in DROPOUT_SITES:
            raise ValueError(f"model.dropout_sites: {dropout_sites!r} is not one of {list(DROPOUT_SITES)}")
        register_bert_attention()
        config = BertConfig(**preset.bert_kwargs())
        config._attn_implementation = BERT_ATTENTION
        self.transformer = BertModel(config, add_pooling_layer=False)
        for parent in list(self.transformer.modules()):  # BERT's own dropouts draw their masks like LoRA's
            for name, child in parent.named_children():
                if isinstance(child, nn.Dropout):
                    setattr(parent, name, Dropout(child.p))
        if dropout_sites == "reference":
            for layer in self.transformer.encoder.layer:
                layer.attention.self.dropout.p = 0.0  # attention probabilities
                layer.attention.output.dropout.p = 0.0  # attention output, before the residual LayerNorm
        self.proj = nn.Sequential(
            nn.Linear(preset.text_width, preset.text_proj_hidden, bias=False),
            nn.GELU(),
            nn.Linear(preset.text_proj_hidden, preset.embed_dim, bias=False),
        )

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B,L] -> projected, unnormalised tokens [B, L, embed] (index 0 = CLS)."""
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return self.proj(out.last_hidden_state)


# ------------------------------------------------------------------------------------------ preprocessing


class _ToRGB:
    """PIL image -> RGB (grayscale radiographs become 3 identical channels). A class, so transforms pickle."""

    def __call__(self, image):
        return image.convert("RGB")


def build_image_transform(preset: ModelPreset, train: bool):
    """PIL.Image -> FloatTensor[3,H,W]. Eval: resize shortest side (bicubic) + centre crop; train: resize to HxW."""
    from torchvision import transforms as T

    size = preset.image_size
    resize = (
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)
        if train
        else T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    )
    steps = [resize] if train else [resize, T.CenterCrop(size)]
    return T.Compose([_ToRGB(), *steps, T.ToTensor(), T.Normalize(preset.mean, preset.std)])


# ---------------------------------------------------------------------------------------------- files


def _offline_help(what: str) -> str:
    return (
        f"{what}: download the BiomedCLIP files once (from https://huggingface.co/microsoft/"
        "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224): put open_clip_pytorch_model.bin and vocab.txt "
        "(optionally tokenizer_config.json, special_tokens_map.json) into one folder and set "
        "model.checkpoint to that folder (the tokenizer is read from the same folder)."
    )


def resolve_hub_file(spec: str, filename: str) -> Path:
    """Download (or find in the Hugging Face cache) ``filename`` of ``hf-hub:<repo>``."""
    repo = spec[len("hf-hub:") :] if spec.startswith("hf-hub:") else spec
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except Exception as err:  # offline, no cache, gated repo, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise FileNotFoundError(
            _offline_help(f"{spec}/{filename} is not available{' (HF_HUB_OFFLINE is set)' if offline else ''} ({err})")
        ) from err


def resolve_checkpoint_file(spec: str | Path) -> Path:
    """The checkpoint file named by ``spec``: a file, a folder holding one of CHECKPOINT_FILES, or hf-hub:<repo>."""
    text = str(spec)
    if text.startswith("hf-hub:"):
        return resolve_hub_file(text, CHECKPOINT_FILES[0])
    path = Path(text)
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(_offline_help(f"{path} holds none of {', '.join(CHECKPOINT_FILES)}"))
    raise FileNotFoundError(_offline_help(f"checkpoint {text!r} does not exist"))


def resolve_tokenizer_source(checkpoint: str | Path | None) -> str:
    """Tokenizer location that goes with a checkpoint: its folder (vocab.txt) or the same hub repo."""
    if checkpoint is None:
        raise ValueError("no tokenizer given and no checkpoint to take it from")
    text = str(checkpoint)
    if text.startswith("hf-hub:"):
        try:
            vocab = resolve_hub_file(text, "vocab.txt")
        except FileNotFoundError:
            # no vocabulary in the repo itself: the open_clip config names the tokenizer's hub repo
            config = json.loads(resolve_hub_file(text, "open_clip_config.json").read_text())
            name = config.get("model_cfg", config).get("text_cfg", {}).get("hf_tokenizer_name")
            if not name:
                raise FileNotFoundError(_offline_help(f"{text} has no vocab.txt and names no tokenizer")) from None
            return name
        for name in TOKENIZER_FILES[1:]:
            try:
                resolve_hub_file(text, name)
            except FileNotFoundError:
                pass
        return str(vocab.parent)
    path = Path(text)
    folder = path if path.is_dir() else path.parent
    if not (folder / "vocab.txt").is_file():
        raise FileNotFoundError(_offline_help(f"no vocab.txt next to the checkpoint in {folder}"))
    return str(folder)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle loaded with ``weights_only=True`` (never arbitrary code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: refused by torch.load(weights_only=True) - the file holds more than tensors "
            f"and plain containers, so it is not loaded ({err})"
        ) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def base_weight_names(model: nn.Module, prefixes: tuple[str, ...] = ("visual.", "text.")) -> dict[str, nn.Parameter]:
    """open_clip-style names -> parameters of the towers (LoRA wrappers' ``base_layer.`` hops removed)."""
    out = {}
    for name, p in model.named_parameters():
        if not name.startswith(prefixes) or any(part.startswith("lora_") for part in name.split(".")):
            continue
        out[name.replace(".base_layer.", ".")] = p
    return out


@torch.no_grad()
def load_open_clip_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> float | None:
    """Copy an open_clip BiomedCLIP state dict into ``model``'s towers after checking key sets and shapes.

    Returns the checkpoint's ``logit_scale`` (log space) or None. Missing or unexpected tower keys raise ValueError.
    """
    targets = base_weight_names(model)
    source = {
        k: v
        for k, v in state_dict.items()
        if k.startswith(("visual.", "text.")) and not k.endswith(_IGNORED_KEY_SUFFIXES)
    }
    missing = sorted(set(targets) - set(source))
    unexpected = sorted(set(source) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the architecture: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} ({len(missing)}), unexpected {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})"
        )
    bad = [(k, tuple(source[k].shape), tuple(p.shape)) for k, p in targets.items() if source[k].shape != p.shape]
    if bad:
        raise ValueError(f"checkpoint shapes differ from the architecture (key, file, model): {bad[:8]}")
    for k, p in targets.items():
        p.copy_(source[k].to(p.dtype))
    scale = state_dict.get("logit_scale")
    return None if scale is None else float(scale)
