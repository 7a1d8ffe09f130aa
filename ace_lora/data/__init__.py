"""Data sets: fetch (raw layouts), prepare (one processed format), benchmarks and torch Datasets.

The names below are loaded from their modules on first use (the table holds module names as strings, resolved with
:func:`importlib.import_module`): importing one submodule, e.g. ``ace_lora.data.benchmarks`` for an evaluation,
runs this file first, and an ``import`` statement here would make every stage that reads a benchmark depend on the
fetch and prepare code too (:func:`ace_lora.provenance.import_closure` follows every import statement).
"""

from __future__ import annotations

from ace_lora import lazy_exports

#: public name -> the module that defines it (``module:attribute`` where the name differs there)
_EXPORTS = {
    "fetch_dataset": "ace_lora.data.fetch",
    "prepare_dataset": "ace_lora.data.prepare",
    "BadInputError": "ace_lora.data.readers",
    "CHEXPERT_5X200_CLASSES": "ace_lora.registry",
    "CHEXPERT_FINDINGS": "ace_lora.registry",
    "NIH_FINDINGS": "ace_lora.registry",
    "DATASETS": "ace_lora.registry:DATASET_NAMES",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
