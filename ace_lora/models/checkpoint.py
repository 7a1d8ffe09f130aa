"""Adapter files: our own format (safetensors + adapter.json) and the official ``ACE_LoRA.pt`` layout
(docs/method.md#official-checkpoint)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from ace_lora.config import LossConfig, ModelConfig, ParamsError, build, to_dict
from ace_lora.io import atomic_write, atomic_write_text
from ace_lora.models.ace_lora import AceLoraModel, build_model
from ace_lora.models.lora import LoraLinear
from ace_lora.models.presets import BIOMEDCLIP_HUB_ID, DEFAULT_LOG_LOGIT_SCALE

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT = "ace-lora-adapter"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter that does not fit the model (other preset, other LoRA/HGNN layout) or a malformed file."""


def save_adapter(model: AceLoraModel, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``adapter.safetensors`` (adapter tensors only) and ``adapter.json`` (everything to rebuild the model).

    LoRA must be unmerged (merged weights are not an adapter). Files are written to temporary names and renamed.
    """
    from safetensors.torch import save_file

    if any(m.merged for m in model.modules() if isinstance(m, LoraLinear)):
        raise AdapterError("unmerge LoRA (model.unmerge_lora()) before saving the adapter")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.adapter_state_dict().items()}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "preset": model.preset.name,
        "model": to_dict(model.model_cfg),
        "loss": to_dict(model.loss_cfg),
        "parameters": model.parameter_breakdown(),
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "extra": extra or {},
    }
    atomic_write(out / ADAPTER_WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    atomic_write_text(out / ADAPTER_CONFIG, json.dumps(meta, indent=2) + "\n")
    return out


def read_adapter_config(adapter_dir: str | Path) -> tuple[ModelConfig, LossConfig, dict]:
    """(ModelConfig, LossConfig, raw metadata) of an adapter folder."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        hint = (
            " (an official ACE_LoRA.pt? convert it with `python -m ace_lora import-checkpoint`)"
            if Path(adapter_dir).is_file()
            else ""
        )
        raise AdapterError(f"{path}: adapter.json not found{hint}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an {FORMAT} file (format={meta.get('format')!r})")
    try:
        model_cfg = build(ModelConfig, meta["model"], "adapter.model")
        loss_cfg = build(LossConfig, meta.get("loss", {}), "adapter.loss")
    except ParamsError as err:
        raise AdapterError(f"{path}: {err}") from err
    return model_cfg, loss_cfg, meta


def load_adapter_weights(model: AceLoraModel, adapter_dir: str | Path) -> AceLoraModel:
    """Load an adapter folder's tensors into an existing model, checking preset, key set and shapes."""
    from safetensors.torch import load_file

    _, _, meta = read_adapter_config(adapter_dir)
    if meta.get("preset") != model.preset.name:
        raise AdapterError(
            f"{adapter_dir}: adapter was trained for preset {meta.get('preset')!r}, "
            f"the model is preset {model.preset.name!r}"
        )
    tensors = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    load_adapter_state_dict(model, tensors, source=str(adapter_dir))
    return model


@torch.no_grad()
def load_adapter_state_dict(model: AceLoraModel, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy adapter tensors into ``model`` (exact key set and shapes required; LoRA must be unmerged)."""
    if any(m.merged for m in model.modules() if isinstance(m, LoraLinear)):
        raise AdapterError("unmerge LoRA before loading an adapter")
    own = dict(model.named_parameters())
    expected = set(model.adapter_state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise AdapterError(
            f"{source}: adapter does not fit the model (other LoRA/HGNN settings?): "
            f"missing {missing[:6]} ({len(missing)}), unexpected {unexpected[:6]} ({len(unexpected)})"
        )
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in tensors.items() if v.shape != own[k].shape]
    if bad:
        raise AdapterError(f"{source}: shapes differ (key, adapter, model): {bad[:6]}")
    for k, v in tensors.items():
        own[k].copy_(v.to(own[k].dtype))


def load_adapter(
    adapter_dir: str | Path,
    device: str | torch.device | None = None,
    *,
    tokenizer=None,
    model_cfg: ModelConfig | None = None,
) -> AceLoraModel:
    """Rebuild the model from ``adapter.json`` and load the adapter tensors.

    ``tokenizer`` / ``model_cfg`` override the stored ones (e.g. a checkpoint folder on another machine); a
    ``model_cfg`` of another preset raises :class:`AdapterError`.
    """
    stored_cfg, loss_cfg, meta = read_adapter_config(adapter_dir)
    cfg = model_cfg or stored_cfg
    if cfg.preset != meta.get("preset"):
        raise AdapterError(
            f"{adapter_dir}: adapter was trained for preset {meta.get('preset')!r}, "
            f"the requested model is preset {cfg.preset!r}"
        )
    model = build_model(cfg, loss_cfg, tokenizer=tokenizer)
    load_adapter_weights(model, adapter_dir)
    if device is not None:
        model.to(device)
    return model


# ------------------------------------------------------------------------------- official ACE_LoRA.pt


def _flatten(tree: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def official_to_adapter_state_dict(weights: dict, model: AceLoraModel) -> dict[str, torch.Tensor]:
    """Map the official ``weights`` dict (docs/method.md#official-checkpoint) onto this model's adapter names.

    ``layer_{i}/{q,k,v}_proj/w_lora_{A,B}``: layers 0..T-1 = text (BERT) layers, T.. = image (ViT) blocks;
    ``{img,text}_{edge,node}_adapter`` -> ``hgnn_{image,text}.{edge,node}``; ``logit_scale`` (linear space).
    """
    flat = _flatten(weights)
    n_text = model.preset.text_layers
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in flat.items():
        parts = key.split("/")
        if parts[0].startswith("layer_") and len(parts) == 3 and parts[2] in ("w_lora_A", "w_lora_B"):
            i = int(parts[0][len("layer_") :])
            t = parts[1].removesuffix("_proj")
            ab = "lora_A" if parts[2] == "w_lora_A" else "lora_B"
            if i < n_text:
                names = {"q": "query", "k": "key", "v": "value"}
                if t not in names:
                    unknown.append(key)
                    continue
                out[f"text.transformer.encoder.layer.{i}.attention.self.{names[t]}.{ab}.{t}"] = value
            else:
                out[f"visual.trunk.blocks.{i - n_text}.attn.qkv.{ab}.{t}"] = value
        elif parts[0] in ("img_edge_adapter", "img_node_adapter", "text_edge_adapter", "text_node_adapter"):
            tower, kind, _ = parts[0].split("_")
            sub = ".".join(parts[1:])
            out[f"hgnn_{'image' if tower == 'img' else 'text'}.{kind}.{sub}"] = value
        elif key == "logit_scale":
            out["logit_scale"] = value.reshape(())
        else:
            unknown.append(key)
    if unknown:
        raise AdapterError(f"official checkpoint: unrecognised entries {unknown[:8]}")
    return out


def load_official_checkpoint(model: AceLoraModel, path: str | Path) -> dict:
    """Load an official ``ACE_LoRA.pt`` into ``model`` (after checking r / top-k / targets); returns its metadata."""
    obj = read_state_dict_any(path)
    if not isinstance(obj, dict) or "weights" not in obj:
        raise AdapterError(f"{path}: expected {{'weights': ..., 'metadata': ...}} (the official layout)")
    meta = dict(obj.get("metadata") or {})
    cfg = model.model_cfg
    checks = [("r", cfg.lora.rank), ("topk", cfg.hgnn.topk)]
    if "params" in meta:
        checks.append(("params", list(cfg.lora.targets)))
    for key, ours in checks:
        if key in meta and (list(meta[key]) if key == "params" else meta[key]) != ours:
            raise AdapterError(f"{path}: metadata {key}={meta[key]!r} but the model has {ours!r}")
    tensors = official_to_adapter_state_dict(obj["weights"], model)
    if "logit_scale" not in tensors:
        tensors["logit_scale"] = model.logit_scale.detach().clone()
    load_adapter_state_dict(model, tensors, source=str(path))
    return meta


def read_state_dict_any(path: str | Path):
    """``torch.load(weights_only=True)`` of a file (the whole object, not only tensors), with a clear refusal."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise AdapterError(f"{path}: refused by torch.load(weights_only=True); it is not loaded ({err})") from err


def build_from_official_checkpoint(
    checkpoint: str | Path, model_cfg: ModelConfig | None = None, loss_cfg: LossConfig | None = None, *, tokenizer=None
) -> AceLoraModel:
    """The configured model (towers from ``model_cfg.checkpoint``) with an official ``ACE_LoRA.pt`` loaded."""
    model = build_model(model_cfg or ModelConfig(preset="biomedclip"), loss_cfg, tokenizer=tokenizer)
    load_official_checkpoint(model, checkpoint)
    return model


def import_official_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    loss_cfg: LossConfig | None = None,
    *,
    preset: str = "biomedclip",
    model_cfg: ModelConfig | None = None,
) -> Path:
    """Convert an official ``ACE_LoRA.pt`` into an adapter folder (``adapter.safetensors`` + ``adapter.json``).

    The towers are not needed for the conversion, so no base weights are read; the written ``adapter.json`` keeps
    ``model_cfg.checkpoint`` (default for biomedclip: the BiomedCLIP hub id) so that :func:`load_adapter` later loads
    the towers (``load_adapter(dir, model_cfg=...)`` points it at a local copy). Returns ``out_dir``.
    """
    if model_cfg is None:  # the official adapter belongs to BiomedCLIP: record where its towers come from
        model_cfg = ModelConfig(preset=preset, checkpoint=BIOMEDCLIP_HUB_ID if preset == "biomedclip" else None)
    cfg = model_cfg if model_cfg.preset == preset else dataclasses.replace(model_cfg, preset=preset)
    # shapes only, then uninitialised storage: the towers' values are never used, only adapter tensors are written
    model = build_model(cfg, loss_cfg, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        model.logit_scale.fill_(math.exp(DEFAULT_LOG_LOGIT_SCALE))  # kept only if the file has no logit_scale
    meta = load_official_checkpoint(model, checkpoint)
    save_adapter(model, out_dir, extra={"imported_from": str(checkpoint), "official_metadata": _jsonable(meta)})
    return Path(out_dir)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
