"""Model core: BiomedCLIP towers, LoRA, ACE-HGNN, attention-prior read-out and adapter files."""

from ace_lora.models.ace_lora import AceLoraModel, build_model, describe_model, is_adapter_name
from ace_lora.models.checkpoint import (
    AdapterError,
    build_from_official_checkpoint,
    import_official_checkpoint,
    load_adapter,
    load_adapter_weights,
    load_official_checkpoint,
    save_adapter,
)
from ace_lora.models.presets import PRESETS, ModelPreset, get_preset

__all__ = [
    "AceLoraModel",
    "AdapterError",
    "ModelPreset",
    "PRESETS",
    "build_from_official_checkpoint",
    "build_model",
    "describe_model",
    "get_preset",
    "import_official_checkpoint",
    "is_adapter_name",
    "load_adapter",
    "load_adapter_weights",
    "load_official_checkpoint",
    "save_adapter",
]
