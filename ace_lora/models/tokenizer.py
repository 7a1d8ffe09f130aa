"""BERT WordPiece tokenisation to a fixed context length (docs/method.md#base-model), and WordPiece vocabularies.

Texts of the BiomedCLIP preset are cleaned first as open_clip's BiomedCLIP tokenizer does (``clean_text``).

The tiny preset's vocabulary ships as :data:`TINY_VOCAB_FILE` (one token a line, [PAD] = 0). It is derived from the
demo's texts by :mod:`ace_lora.demo.vocab` with :func:`basic_tokens` and written with :func:`write_vocab`;
:func:`write_tokenizer` turns a vocabulary into a ``from_pretrained`` folder.

With transformers 5 a WordPiece tokenizer is built with ``BertTokenizerFast.from_pretrained(folder)``: a
``vocab_file=`` argument is silently ignored there, so a bare ``vocab.txt`` is passed through ``vocab=`` instead.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import torch

PAD_ID = 0  # BERT vocabularies put [PAD] first; the attention mask is ids != PAD_ID
#: BERT's special tokens, the first entries of every vocabulary written here ([PAD] = :data:`PAD_ID`).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: The shipped vocabulary of the tiny preset (one token a line, [PAD] = 0); regenerate it with
#: :func:`ace_lora.demo.vocab.write_demo_vocab`.
TINY_VOCAB_FILE = Path(__file__).resolve().parent.parent / "assets" / "tiny_vocab.txt"
_TOKEN = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")


def load_tokenizer(source: str | Path):
    """A ``BertTokenizerFast`` from a folder (``vocab.txt`` / ``tokenizer.json``), a ``vocab.txt`` file, or a hub id.

    Hub ids (``org/name`` or ``hf-hub:org/name``) need network access or the Hugging Face cache.
    """
    from transformers import BertTokenizerFast

    text = str(source)
    if text.startswith("hf-hub:"):
        text = text[len("hf-hub:") :]
    path = Path(text)
    if path.is_file():
        vocab = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            token = line.rstrip("\n")
            if token and token not in vocab:
                vocab[token] = len(vocab)
        tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    elif path.is_dir():
        if not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            raise FileNotFoundError(f"tokenizer folder {path} holds neither vocab.txt nor tokenizer.json")
        tok = BertTokenizerFast.from_pretrained(str(path))
    else:
        try:
            tok = BertTokenizerFast.from_pretrained(text)
        except OSError as err:
            raise FileNotFoundError(
                f"tokenizer {source!r}: not a local file or folder, and the hub is unreachable ({err}). "
                "Put vocab.txt (and optionally tokenizer_config.json) into a folder and pass that folder."
            ) from err
    if tok.pad_token_id != PAD_ID:
        raise ValueError(f"tokenizer {source!r}: [PAD] must have id {PAD_ID} (got {tok.pad_token_id})")
    return tok


def clean_text(text: str) -> str:
    """open_clip's ``whitespace`` cleaning (the BiomedCLIP tokenizer's): ftfy's ``fix_text`` (mojibake, odd
    characters), HTML entities unescaped twice (``&amp;lt;`` -> ``<``), whitespace runs collapsed to one space,
    stripped.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


def tokenize(
    tokenizer, texts: str | list[str], context_length: int, clean: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both ``LongTensor[B, context_length]`` (padded / truncated).

    ``clean``: apply :func:`clean_text` to every text first (the BiomedCLIP preset does).
    """
    if isinstance(texts, str):
        texts = [texts]
    if clean:
        texts = [clean_text(t) for t in texts]
    out = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=context_length,
        return_tensors="pt",
        return_token_type_ids=False,
        return_attention_mask=False,
    )
    ids = out["input_ids"].long()
    return ids, (ids != PAD_ID).long()


# ------------------------------------------------------------------------------------------------ vocabularies


def basic_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation characters (BERT's basic tokenizer on ASCII text)."""
    return _TOKEN.findall(text.lower())


def write_vocab(path: Path, vocab: list[str]) -> Path:
    """Write ``vocab`` as ``vocab.txt``-style text (one token a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{tok}\n" for tok in vocab))
    return path


def write_tokenizer(out_dir: Path, vocab: list[str] | None = None) -> Path:
    """Write a ``BertTokenizerFast.from_pretrained``-loadable folder (vocab.txt + tokenizer_config.json) holding
    ``vocab`` (default: the tiny preset's shipped vocabulary, :data:`TINY_VOCAB_FILE`)."""
    out_dir = Path(out_dir)
    write_vocab(out_dir / "vocab.txt", vocab or TINY_VOCAB_FILE.read_text().splitlines())
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": 40,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
