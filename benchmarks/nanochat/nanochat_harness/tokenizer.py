"""Byte-level BPE (HF ``tokenizers``) with one special token, ``<|bos|>``, and the token-bytes
table the metric needs (UTF-8 byte length of each token; 0 for special tokens)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOS = "<|bos|>"
# Pre-split text into words, runs of up to 3 digits, punctuation runs and whitespace before BPE
# (the common GPT-4-style rule), so merges never cross those boundaries.
SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)


def _byte_alphabet() -> dict[str, int]:
    """The byte-level pre-tokenizer writes each byte as one printable character: bytes that are
    printable Latin-1 stand for themselves, the others are shifted to code points 256, 257, …
    Returns {character: byte}."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + shift)] = b
            shift += 1
    return table


def train_bpe(texts: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer on ``texts``; ``<|bos|>`` gets id 0."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[BOS])
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return tok


def load(path: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def token_bytes_table(tok) -> np.ndarray:
    """int32 array, one entry per token id: the UTF-8 byte length of the token's text; 0 for
    special tokens (they carry no text and are excluded from bits-per-byte)."""
    alphabet = _byte_alphabet()
    n = tok.get_vocab_size()
    out = np.zeros(n, dtype=np.int32)
    special = {t.content for t in tok.get_added_tokens_decoder().values()} if hasattr(tok, "get_added_tokens_decoder") else {BOS}
    for piece, i in tok.get_vocab().items():
        if piece in special:
            continue
        try:
            out[i] = len(bytes(alphabet[c] for c in piece))
        except KeyError:
            raise ValueError(f"token {i} ({piece!r}) is not written in the byte-level alphabet; "
                             f"was the tokenizer built by nanochat_harness.tokenizer.train_bpe?") from None
    return out
