"""BERT WordPiece tokenisation to a fixed context length (docs/method.md#base-model).

Texts of the BiomedCLIP preset are cleaned first as open_clip's BiomedCLIP tokenizer does (``clean_text``).

With transformers 5 a WordPiece tokenizer is built with ``BertTokenizerFast.from_pretrained(folder)``: a
``vocab_file=`` argument is silently ignored there, so a bare ``vocab.txt`` is passed through ``vocab=`` instead.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch

PAD_ID = 0  # BERT vocabularies put [PAD] first; the attention mask is ids != PAD_ID


def load_tokenizer(source: str | Path):
    """A ``BertTokenizerFast`` from a folder (``vocab.txt`` / ``tokenizer.json``), a ``vocab.txt`` file, or a hub id.

    Hub ids (``org/name`` or ``hf-hub:org/name``) need network access or the Hugging Face cache.
    """
    from transformers import BertTokenizerFast

    text = str(source)
    if text.startswith("hf-hub:"):
        text = text[len("hf-hub:"):]
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
                "Put vocab.txt (and optionally tokenizer_config.json) into a folder and pass that folder.") from err
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


def tokenize(tokenizer, texts: str | list[str], context_length: int,
             clean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both ``LongTensor[B, context_length]`` (padded / truncated).

    ``clean``: apply :func:`clean_text` to every text first (the BiomedCLIP preset does).
    """
    if isinstance(texts, str):
        texts = [texts]
    if clean:
        texts = [clean_text(t) for t in texts]
    out = tokenizer(list(texts), padding="max_length", truncation=True, max_length=context_length,
                    return_tensors="pt", return_token_type_ids=False, return_attention_mask=False)
    ids = out["input_ids"].long()
    return ids, (ids != PAD_ID).long()
