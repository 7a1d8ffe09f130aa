"""The tiny preset's WordPiece vocabulary, derived from every text the demo can produce.

The vocabulary holds BERT's special tokens ([PAD] = 0), every word and punctuation mark of the demo reports
(:mod:`ace_lora.demo.reports`) and of the default prompts of every benchmark, then single characters and their
``##`` continuations, so that no ASCII word maps to [UNK]. It ships as
:data:`ace_lora.models.tokenizer.TINY_VOCAB_FILE` (the model layer reads it from there, without importing the demo
package); :func:`write_demo_vocab` regenerates it and a test keeps it current.
"""

from __future__ import annotations

import re
from pathlib import Path

from ace_lora.demo.reports import (
    EXAMINATIONS,
    INDICATIONS,
    NEGATIONS,
    NORMAL_FINDINGS,
    NORMAL_IMPRESSIONS,
    REPORT_FORMS,
    REPORT_SKELETON,
    SENTENCES,
    UNCERTAIN_SENTENCES,
)
from ace_lora.models.tokenizer import SPECIAL_TOKENS, TINY_VOCAB_FILE, basic_tokens, write_vocab
from ace_lora.registry import CHEXPERT_FINDINGS, NIH_FINDINGS


def demo_texts() -> list[str]:
    """Every text fragment the demo reports can contain, and the default prompts of every benchmark."""
    from ace_lora.config import PromptsConfig
    from ace_lora.prompts import BENCHMARK_CLASSES, build_prompts

    texts = [
        REPORT_SKELETON,
        "FINDINGS: IMPRESSION: Findings as above. No pleural effusion or pneumothorax.",
        *NORMAL_FINDINGS,
        *NORMAL_IMPRESSIONS,
        *INDICATIONS,
        *EXAMINATIONS.values(),
        *NEGATIONS.values(),
        *SENTENCES,
        *UNCERTAIN_SENTENCES,
        " and ",
        "No",
    ]
    for verbatim, synonyms in REPORT_FORMS.values():
        texts += verbatim + synonyms
    prompts = build_prompts(PromptsConfig(), list(BENCHMARK_CLASSES))
    texts += [p for per_class in prompts.values() for plist in per_class.values() for p in plist]
    texts += list(CHEXPERT_FINDINGS) + list(NIH_FINDINGS)
    return [re.sub(r"\{[^}]*\}", " ", t) for t in texts]


def demo_vocabulary() -> list[str]:
    """The tiny preset's WordPiece vocabulary: special tokens ([PAD] = 0), every demo word and punctuation mark,
    then single characters and their ``##`` continuations so that no ASCII word maps to [UNK]."""
    words = sorted({tok for text in demo_texts() for tok in basic_tokens(text)})
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    punct = [c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
    vocab = list(SPECIAL_TOKENS)
    for tok in words + chars + punct + [f"##{c}" for c in chars]:
        if tok not in vocab:
            vocab.append(tok)
    return vocab


def write_demo_vocab(path: Path = TINY_VOCAB_FILE) -> Path:
    """Write :func:`demo_vocabulary` as ``vocab.txt``-style text (the tiny preset's shipped file by default)."""
    return write_vocab(path, demo_vocabulary())
