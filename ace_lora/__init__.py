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
import sys

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


def lazy_exports(package: str, exports: dict[str, str]):
    """``(__getattr__, __dir__)`` of a package whose public names are loaded from their modules on first use
    (PEP 562) and then cached on the package. ``exports``: public name -> ``"module"`` (the same name there) or
    ``"module:attribute"``."""

    def __getattr__(name: str):
        target = exports.get(name)
        if target is None:
            raise AttributeError(
                f"module {package!r} has no attribute {name!r}; its public names: {', '.join(sorted(exports))}"
            )
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
