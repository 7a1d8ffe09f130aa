"""ACE-LoRA: LoRA + ACE-HGNN + label-guided InfoNCE adaptation of BiomedCLIP.

The public verbs, importable from the package itself (``ace_lora.build_model(...)``); each is defined in the module
named in :data:`_EXPORTS` and loaded on first use, so ``import ace_lora`` stays cheap (no torch, no pandas).

The table holds module names as strings, resolved with :func:`importlib.import_module`, and no ``import`` statement
of a project module: this file belongs to the code dependencies of every pipeline stage (it runs before any
``ace_lora.*`` module), and :func:`ace_lora.provenance.import_closure` follows every import statement it finds, so one
here would make every stage depend on the whole package.
"""

from __future__ import annotations

import importlib

#: public name -> the module that defines it
_EXPORTS = {
    # parameters
    "load_params": "ace_lora.config",
    "resolve_method": "ace_lora.config",
    # models and adapters
    "build_model": "ace_lora.models.ace_lora",
    "describe_model": "ace_lora.models.ace_lora",
    "save_adapter": "ace_lora.models.checkpoint",
    "load_adapter": "ace_lora.models.checkpoint",
    "import_official_checkpoint": "ace_lora.models.checkpoint",
    "build_from_official_checkpoint": "ace_lora.models.checkpoint",
    # benchmarks, prompts and zero-shot evaluation
    "load_benchmark": "ace_lora.data.benchmarks",
    "build_prompts": "ace_lora.prompts",
    "read_prompts": "ace_lora.prompts",
    "build_zero_shot_classifier": "ace_lora.eval.common",
    "evaluate_benchmark": "ace_lora.eval.zeroshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Load a public verb from its module on first use (PEP 562) and cache it on the package."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ace_lora' has no attribute {name!r}; its public names: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
