"""Text tokenizers. The default is byte-level and needs no vocabulary file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    context_length: int

    def __call__(self, texts: Sequence[str]) -> np.ndarray: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: 0 is padding, 1..256 are bytes, then SOT and EOT.

    Sequences are `[SOT, bytes..., EOT, 0, ...]` of length `context_length`;
    truncation keeps the EOT token last, as CLIP's tokenizer does, because the
    text tower pools at the EOT position.
    """

    PAD = 0
    SOT = 257
    EOT = 258
    vocab_size = 259

    def __init__(self, context_length: int, lowercase: bool = True):
        if context_length < 3:
            raise ValueError(f"context_length={context_length} must be at least 3")
        self.context_length = context_length
        self.lowercase = lowercase

    def encode(self, text: str) -> list[int]:
        if self.lowercase:
            text = text.lower()
        body = [b + 1 for b in " ".join(text.split()).encode("utf-8")]
        body = body[: self.context_length - 2]
        return [self.SOT, *body, self.EOT]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = ids
        return out


def build_tokenizer(config) -> Tokenizer:
    """Builds the tokenizer named by `config.kind` (a `tokenizer` config group)."""
    if config.kind == "bytes":
        return ByteTokenizer(config.context_length, lowercase=config.lowercase)
    raise ValueError(f"tokenizer.kind={config.kind!r} is not supported; expected 'bytes'")
