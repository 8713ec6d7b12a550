"""Text tokenizers: byte-level (no vocabulary file, the default), OpenAI CLIP's BPE
(`clip_bpe.py`), a Hugging Face `tokenizer.json`, or a SentencePiece `.model`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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

    PAD = pad_id = 0
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

    @property
    def sot_id(self) -> int:
        return self.SOT

    @property
    def eot_id(self) -> int:
        return self.EOT

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` up to the first EOT (start, end and padding dropped)."""
        body = []
        for i in ids:
            if i == self.EOT:
                break
            if 1 <= i <= 256:
                body.append(i - 1)
        return bytes(body).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face `tokenizers` file (`tokenizer.json`), with its own normaliser and
    special-token template; cut to `context_length` (the template's end token kept)
    and padded with the file's padding id, else its `[PAD]`/`<pad>` token, else 0."""

    def __init__(self, path: str, context_length: int, lowercase: bool = False):
        from tokenizers import Tokenizer as Backend

        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer.path={path!r}: no tokenizer.json there")
        self.backend = Backend.from_file(path)
        self.context_length = context_length
        self.lowercase = lowercase
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.pad_id = self._pad_id()
        self.backend.enable_truncation(max_length=context_length)
        self.backend.no_padding()

    def _pad_id(self) -> int:
        if self.backend.padding is not None:
            return int(self.backend.padding["pad_id"])
        for name in ("[PAD]", "<pad>", "<|padding|>"):
            if (index := self.backend.token_to_id(name)) is not None:
                return index
        return 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [t.lower() if self.lowercase else t for t in texts]
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        for row, encoding in enumerate(self.backend.encode_batch(texts)):
            out[row, : len(encoding.ids)] = encoding.ids
        return out


class SentencePieceTokenizer:
    """A SentencePiece `.model`: pieces, then EOS (kept last when cut to
    `context_length`), padded with the model's pad id (0 if it has none)."""

    def __init__(self, path: str, context_length: int, lowercase: bool = False):
        import sentencepiece

        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer.path={path!r}: no SentencePiece .model there")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=path)
        self.context_length = context_length
        self.lowercase = lowercase
        self.vocab_size = self.processor.get_piece_size()
        self.eos_id = self.processor.eos_id()
        self.pad_id = max(self.processor.pad_id(), 0)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        texts = [t.lower() if self.lowercase else t for t in texts]
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int32)
        for row, ids in enumerate(self.processor.encode(texts)):
            if self.eos_id >= 0:
                ids = [*ids[: self.context_length - 1], self.eos_id]
            ids = ids[: self.context_length]
            out[row, : len(ids)] = ids
        return out


TOKENIZER_KINDS = ("bytes", "clip", "hf", "sentencepiece")


def build_tokenizer(config) -> Tokenizer:
    """Builds the tokenizer named by `config.kind` (a `tokenizer` config group)."""
    kind, length, path = config.kind, config.context_length, config.get("path", "")
    if kind == "bytes":
        if path:
            raise ValueError(f"tokenizer.path={path!r} is not used by tokenizer.kind='bytes'")
        return ByteTokenizer(length, lowercase=config.lowercase)
    if kind == "clip":
        if not config.get("lowercase", True):
            raise ValueError(
                "tokenizer.lowercase=False: tokenizer.kind='clip' always lowercases, as "
                "OpenAI's BPE vocabulary was built from lowercased text"
            )
        from clipjax.data.clip_bpe import ClipBpeTokenizer

        return ClipBpeTokenizer(length, path or None)
    if kind in ("hf", "sentencepiece") and not path:
        raise ValueError(f"tokenizer.kind={kind!r} needs tokenizer.path (the vocabulary file)")
    if kind == "hf":
        return HFTokenizer(path, length, lowercase=config.lowercase)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path, length, lowercase=config.lowercase)
    raise ValueError(f"tokenizer.kind={kind!r} is not supported; expected one of {TOKENIZER_KINDS}")
