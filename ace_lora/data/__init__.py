"""Data sets: fetch (raw layouts), prepare (one processed format), benchmarks and torch Datasets.

The names below are loaded from their modules on first use (the table holds module names as strings, resolved with
:func:`importlib.import_module`): importing one submodule, e.g. ``ace_lora.data.benchmarks`` for an evaluation,
runs this file first, and an ``import`` statement here would make every stage that reads a benchmark depend on the
fetch and prepare code too (:func:`ace_lora.provenance.import_closure` follows every import statement).
"""

from __future__ import annotations

import importlib

#: public name -> the module that defines it
_EXPORTS = {
    "fetch_dataset": "ace_lora.data.fetch",
    "prepare_dataset": "ace_lora.data.prepare",
    "BadInputError": "ace_lora.data.readers",
    "CHEXPERT_5X200_CLASSES": "ace_lora.registry",
    "CHEXPERT_FINDINGS": "ace_lora.registry",
    "NIH_FINDINGS": "ace_lora.registry",
    "DATASETS": "ace_lora.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Load a public name from its module on first use (PEP 562) and cache it on the package."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(
            f"module 'ace_lora.data' has no attribute {name!r}; its public names: {', '.join(__all__)}"
        )
    value = getattr(importlib.import_module(module), "DATASET_NAMES" if name == "DATASETS" else name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
