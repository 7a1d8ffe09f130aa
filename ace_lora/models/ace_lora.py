"""AceLoraModel: BiomedCLIP towers + LoRA + ACE-HGNN + a learnable logit scale (docs/method.md).

Parameters whose dotted name has a part starting with ``lora_`` or ``hgnn`` or equal to ``logit_scale`` are the
adapter (trained and saved); everything else is frozen.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ace_lora.config import LossConfig, ModelConfig
from ace_lora.models.attention import BertPriorReader, VitPriorReader
from ace_lora.models.biomedclip import (
    ImageTower,
    TextTower,
    build_image_transform,
    load_open_clip_state_dict,
    read_state_dict,
    resolve_checkpoint_file,
    resolve_tokenizer_source,
)
from ace_lora.models.hgnn import AceHgnn
from ace_lora.models.lora import apply_lora_to_bert, apply_lora_to_vit, lora_modules, merge_lora, unmerge_lora
from ace_lora.models.presets import DEFAULT_LOG_LOGIT_SCALE, ModelPreset, get_preset
from ace_lora.models.tokenizer import TINY_VOCAB_FILE, load_tokenizer, tokenize

_LORA_SEED_OFFSET = 1  # LoRA A and HGNN weights draw from generators seeded apart from the towers'
_HGNN_SEED_OFFSET = 2


def is_adapter_name(name: str) -> bool:
    """True for the trainable/saved parameter names: a part starting with ``lora_``/``hgnn`` or ``logit_scale``."""
    return any(part.startswith(("lora_", "hgnn")) or part == "logit_scale" for part in name.split("."))


class AceLoraModel(nn.Module):
    """Both towers with LoRA, optional ACE-HGNN per tower, and a linear-space learnable logit scale.

    Build with :func:`build_model`. ``tokenizer`` may be None (e.g. a meta-device model for counting parameters);
    :meth:`tokenize` then raises.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig | None = None,
        tokenizer=None,
        init_logit_scale: float = DEFAULT_LOG_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg or LossConfig()
        self.preset: ModelPreset = get_preset(model_cfg.preset)
        self.tokenizer = tokenizer
        self.sep_token_id = getattr(tokenizer, "sep_token_id", None)
        if self.sep_token_id is None:
            self.sep_token_id = 102  # BERT uncased [SEP]
        self.visual = ImageTower(self.preset)
        self.text = TextTower(self.preset, model_cfg.dropout_sites)
        h = model_cfg.hgnn
        dim = self.preset.embed_dim
        self.hgnn_image = AceHgnn(dim, h.hidden, h.topk, h.fusion) if h.towers in ("both", "image") else None
        self.hgnn_text = AceHgnn(dim, h.hidden, h.topk, h.fusion) if h.towers in ("both", "text") else None
        # linear space (docs/method.md#label-guided-infonce): exp of the base model's log-space scale
        self.logit_scale = nn.Parameter(torch.tensor(math.exp(init_logit_scale)))
        self._lora_applied = False
        self._readers_ready = False

    # ------------------------------------------------------------------------------------- set-up

    def apply_lora(self) -> None:
        """Wrap the configured projections (call once, after base weights are loaded)."""
        cfg = self.model_cfg.lora
        if not cfg.enabled or self._lora_applied:
            self._lora_applied = True
            return
        gen = torch.Generator().manual_seed(self.model_cfg.init_seed + _LORA_SEED_OFFSET)
        seed = self.model_cfg.init_seed + _LORA_SEED_OFFSET if cfg.init == "shared" else None
        layers = None if cfg.layers is None else set(cfg.layers)
        for tower, n_layers in (("image", self.preset.vision_layers), ("text", self.preset.text_layers)):
            if layers is not None and any(not 0 <= i < n_layers for i in layers):
                raise ValueError(f"model.lora.layers: {sorted(layers)} outside 0..{n_layers - 1} ({tower} tower)")
        # text first, then image: the order of the official checkpoint (layers 0-11 text, 12-23 image)
        if "text" in cfg.towers:
            apply_lora_to_bert(self.text.transformer, cfg.targets, cfg.rank, cfg.alpha, cfg.dropout, layers, gen, seed)
        if "image" in cfg.towers:
            apply_lora_to_vit(self.visual.trunk, cfg.targets, cfg.rank, cfg.alpha, cfg.dropout, layers, gen, seed)
        self._lora_applied = True

    def attach_prior_readers(self) -> None:
        """Register the attention-prior hooks (after LoRA wrapping, so the adapted q/k are read)."""
        if not self._readers_ready:
            self.image_prior_reader = VitPriorReader(self.visual.trunk)
            self.text_prior_reader = BertPriorReader(self.text.transformer)
            self._readers_ready = True

    def freeze(self) -> None:
        """requires_grad = is_adapter_name(name); the logit scale follows ``loss.learnable_scale``."""
        for name, p in self.named_parameters():
            p.requires_grad_(is_adapter_name(name))
        self.logit_scale.requires_grad_(bool(self.loss_cfg.learnable_scale))

    # ------------------------------------------------------------------------------------- inputs

    def image_transform(self, train: bool = False):
        """PIL.Image -> FloatTensor[3,H,W] (grayscale -> RGB; eval: resize shortest + centre crop)."""
        return build_image_transform(self.preset, train)

    def tokenize(self, texts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), both LongTensor[B, context_length]."""
        if self.tokenizer is None:
            raise RuntimeError("this model was built without a tokenizer")
        return tokenize(self.tokenizer, texts, self.preset.context_length, clean=self.preset.clean_text)

    # ------------------------------------------------------------------------------------- towers

    def _prior_kind(self, tower: str) -> str:
        kind = self.model_cfg.hgnn.prior
        if kind == "reference":
            return "logits" if tower == "image" else "softmax"
        return kind

    def image_nodes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] -> (nodes [B,N,D] L2-normalised, prior [B,N-1]); nodes[:,0] = projected CLS."""
        tokens = self.visual.forward_tokens(images)
        prior = self.image_prior_reader.read(self._prior_kind("image"))
        return F.normalize(tokens, dim=-1), prior

    def image_global(self, nodes: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """[B,D] L2-normalised: the ACE-HGNN output v'0 when on for images, else nodes[:,0]."""
        if self.hgnn_image is None:
            return nodes[:, 0]
        return self.hgnn_image(nodes, prior)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_global(*self.image_nodes(images))

    def text_nodes(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, mask [B,L] -> (nodes [B,L,D] L2-normalised, prior [B,L-1], node_mask [B,L] bool).

        node_mask is all True for ``hgnn.text_nodes = all`` (reference); for ``content`` it drops [PAD] and [SEP].
        When no padding position is a node (``content``, or no text HGNN), the columns that are padding in every
        sequence are not computed: L is then the longest sequence of the batch. BERT's key mask hides padding from
        every other position, so the returned values are unchanged.
        """
        if self.model_cfg.hgnn.text_nodes == "content" or self.hgnn_text is None:
            used = attention_mask.any(dim=0).nonzero()
            length = int(used.max()) + 1 if len(used) else 1
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        tokens = self.text.forward_tokens(input_ids, attention_mask)
        prior = self.text_prior_reader.read(self._prior_kind("text"), attention_mask)
        if self.model_cfg.hgnn.text_nodes == "content":
            node_mask = attention_mask.bool() & (input_ids != self.sep_token_id)
            node_mask[:, 0] = True
        else:
            node_mask = torch.ones_like(input_ids, dtype=torch.bool)
        return F.normalize(tokens, dim=-1), prior, node_mask

    def text_global(
        self, nodes: torch.Tensor, prior: torch.Tensor, node_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B,D] L2-normalised: the ACE-HGNN output v'0 when on for text, else nodes[:,0]."""
        if self.hgnn_text is None:
            return nodes[:, 0]
        if self.model_cfg.hgnn.text_nodes == "all":
            node_mask = None
        return self.hgnn_text(nodes, prior, node_mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_global(*self.text_nodes(input_ids, attention_mask))

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_emb [B,D], text_emb [B,D]), both L2-normalised."""
        return self.encode_image(images), self.encode_text(input_ids, attention_mask)

    # ------------------------------------------------------------------------------------- adapter

    def merge_lora(self) -> None:
        """Fold every LoRA update into its base weight (explicit; never done by ``.eval()``)."""
        merge_lora(self)

    def unmerge_lora(self) -> None:
        unmerge_lora(self)

    @property
    def lora_merged(self) -> bool:
        mods = lora_modules(self)
        return bool(mods) and all(m.merged for m in mods)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter tensors (names with the ``lora_``/``hgnn``/``logit_scale`` parts), detached."""
        return {n: p.detach() for n, p in self.named_parameters() if is_adapter_name(n)}

    def parameter_breakdown(self, trainable_only: bool = True) -> dict[str, int]:
        """{"lora", "hgnn", "logit_scale", "total"} parameter counts (trainable ones by default)."""
        out = {"lora": 0, "hgnn": 0, "logit_scale": 0}
        for name, p in self.named_parameters():
            if trainable_only and not p.requires_grad:
                continue
            parts = name.split(".")
            if any(part.startswith("lora_") for part in parts):
                out["lora"] += p.numel()
            elif any(part.startswith("hgnn") for part in parts):
                out["hgnn"] += p.numel()
            elif "logit_scale" in parts:
                out["logit_scale"] += p.numel()
        out["total"] = out["lora"] + out["hgnn"] + out["logit_scale"]
        return out


def _resolve_tokenizer(model_cfg: ModelConfig, tokenizer):
    """(tokenizer object, location string or None) from an explicit argument or the config."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer, getattr(tokenizer, "name_or_path", None) or None
    source = tokenizer if tokenizer is not None else model_cfg.tokenizer
    if source is None:
        if model_cfg.checkpoint is not None:
            source = resolve_tokenizer_source(model_cfg.checkpoint)
        elif model_cfg.preset == "tiny":
            if not TINY_VOCAB_FILE.is_file():
                raise FileNotFoundError(
                    f"the tiny preset's vocabulary {TINY_VOCAB_FILE} is missing (it ships with "
                    "the package); pass model.tokenizer (a folder or vocab.txt) instead"
                )
            source = TINY_VOCAB_FILE
        else:
            raise ValueError(
                f"model.tokenizer: preset {model_cfg.preset!r} without a checkpoint needs a tokenizer "
                "folder (vocab.txt); the BiomedCLIP one is in the checkpoint folder / hub repo"
            )
    return load_tokenizer(source), str(source)


def build_model(
    model_cfg: ModelConfig,
    loss_cfg: LossConfig | None = None,
    *,
    tokenizer=None,
    device: str | torch.device | None = None,
    load_weights: bool = True,
) -> AceLoraModel:
    """The configured model: towers (random from ``init_seed`` or the checkpoint), LoRA, ACE-HGNN, logit scale.

    ``tokenizer``: a tokenizer object, or a folder / vocab.txt path overriding ``model_cfg.tokenizer``.
    ``device="meta"`` builds shapes only (parameter counting); no tokenizer or checkpoint is read then.
    ``load_weights=False`` skips reading ``model_cfg.checkpoint`` (random towers; e.g. converting adapter files).
    The returned model is in eval mode with LoRA unmerged; only adapter parameters require grad.
    """
    loss_cfg = loss_cfg or LossConfig()
    meta = device is not None and torch.device(device).type == "meta"
    tok, tok_source = (None, None) if meta else _resolve_tokenizer(model_cfg, tokenizer)
    if tok_source is not None and tokenizer is not None and isinstance(tokenizer, (str, Path)):
        model_cfg = dataclasses.replace(model_cfg, tokenizer=tok_source)
    preset = get_preset(model_cfg.preset)
    if tok is not None and len(tok) > preset.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens but preset {preset.name!r} embeds {preset.vocab_size}")
    if meta:
        with torch.device("meta"):
            model = AceLoraModel(model_cfg, loss_cfg, None)
            model.apply_lora()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_cfg.init_seed)
            model = AceLoraModel(model_cfg, loss_cfg, tok)
            _seed_hgnn(model, model_cfg.init_seed + _HGNN_SEED_OFFSET)
        if model_cfg.checkpoint is not None and load_weights:
            state = read_state_dict(resolve_checkpoint_file(model_cfg.checkpoint))
            log_scale = load_open_clip_state_dict(model, state)
            if log_scale is not None:
                with torch.no_grad():
                    model.logit_scale.fill_(math.exp(log_scale))
        model.apply_lora()
    model.attach_prior_readers()
    model.freeze()
    model.eval()
    if device is not None and not meta:
        model.to(device)
    return model


@torch.no_grad()
def _seed_hgnn(model: AceLoraModel, seed: int) -> None:
    """Re-draw the HGNN weights from their own seed, so they do not depend on the towers' sizes."""
    gen = torch.Generator().manual_seed(seed)
    for hgnn in (model.hgnn_image, model.hgnn_text):
        if hgnn is None:
            continue
        for mlp in (hgnn.edge, hgnn.node):
            for lin in (mlp.down, mlp.up):
                nn.init.kaiming_normal_(lin.weight, generator=gen)
                bound = 1 / math.sqrt(lin.in_features)
                nn.init.uniform_(lin.bias, -bound, bound, generator=gen)


def describe_model(
    preset: str = "biomedclip", model_cfg: ModelConfig | None = None, loss_cfg: LossConfig | None = None
) -> str:
    """Trainable-parameter breakdown text of a preset (built on the meta device: fast, no weights read)."""
    cfg = model_cfg if model_cfg is not None else ModelConfig(preset=preset)
    if model_cfg is not None and preset != cfg.preset:
        cfg = dataclasses.replace(cfg, preset=preset)
    model = build_model(dataclasses.replace(cfg, checkpoint=None), loss_cfg, device="meta")
    b = model.parameter_breakdown()
    p = model.preset
    lora = cfg.lora
    lines = [
        f"preset {p.name}: image ViT {p.vision_layers}x{p.vision_width} ({p.image_size}px, patch {p.patch_size}), "
        f"text BERT {p.text_layers}x{p.text_width} (context {p.context_length}), joint space {p.embed_dim}",
        f"  LoRA        {b['lora']:>12,}  (r={lora.rank}, alpha={lora.alpha}, targets {'/'.join(lora.targets)}, "
        f"towers {'+'.join(lora.towers)}{'' if lora.enabled else ', disabled'})",
        f"  ACE-HGNN    {b['hgnn']:>12,}  (towers {cfg.hgnn.towers}, hidden {cfg.hgnn.hidden}, top-k {cfg.hgnn.topk})",
        f"  logit scale {b['logit_scale']:>12,}",
        f"  total       {b['total']:>12,}  trainable",
    ]
    return "\n".join(lines)
