"""OpenAI CLIP's byte-pair-encoding tokenizer, from a `bpe_simple_vocab_16e6.txt.gz`-format file.

The ids equal OpenAI's and OpenCLIP's: text is repaired with ftfy, HTML-unescaped,
whitespace-collapsed and lowercased; split by CLIP's pattern; each piece's UTF-8
bytes are mapped to printable characters and merged by rank, the last symbol of a
word carrying `</w>`. A sequence is `[SOT, ids..., EOT]` padded with 0; a longer
one is cut to `context_length` with EOT kept last. The vocabulary is 256 byte
symbols, the same with `</w>`, the merges, then the start and end tokens (49406
and 49407 with the standard file). As in OpenCLIP, `<start_of_text>` or
`<end_of_text>` written in a caption become those tokens.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex

BUNDLED_VOCAB = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
WORD_CACHE = 200_000  # merged words kept; cleared when full
STANDARD_MERGES = 49152 - 256 - 2  # merges OpenAI's vocabulary uses from the file
SOT, EOT = "<start_of_text>", "<end_of_text>"  # OpenCLIP's names; OpenAI's differ, not the ids
PIECES = regex.compile(
    f"{SOT}|{EOT}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _printable_bytes() -> list[int]:
    return [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]


@functools.cache
def byte_symbols() -> tuple[str, ...]:
    """A printable character for each byte value: printable Latin-1 bytes stand for
    themselves, the rest are moved to code points from 256 up."""
    printable = set(_printable_bytes())
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return tuple(symbols[b] for b in range(256))


def vocabulary_symbols() -> list[str]:
    """The 256 byte symbols in vocabulary order: printable bytes first, then the rest."""
    printable = _printable_bytes()
    rest = [b for b in range(256) if b not in set(printable)]
    return [byte_symbols()[b] for b in printable + rest]


def clean(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def read_merges(path: str | Path, limit: int = STANDARD_MERGES) -> list[tuple[str, str]]:
    """The merge rules of a vocab file (after its version line), at most `limit`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP BPE vocabulary {str(path)!r} does not exist")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : limit + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ClipBpeTokenizer:
    """`tokenizer(texts)` -> int32 [len(texts), context_length], OpenAI CLIP's ids."""

    def __init__(self, context_length: int = 77, vocab_path: str | Path | None = None):
        if context_length < 2:
            raise ValueError(f"context_length={context_length} must be at least 2")
        self.context_length = context_length
        merges = read_merges(vocab_path or BUNDLED_VOCAB)
        symbols = vocabulary_symbols()
        names = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        names += [SOT, EOT]
        self.ids = {name: index for index, name in enumerate(names)}
        self.names = names
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.sot, self.eot = self.ids[SOT], self.ids[EOT]
        self.vocab_size = len(names)
        self._words: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    def _merge(self, piece: str) -> tuple[str, ...]:
        if piece in self._words:
            return self._words[piece]
        table = byte_symbols()
        word = [table[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._words) >= WORD_CACHE:  # web captions: an endless tail of rare words
            self._words = {SOT: (SOT,), EOT: (EOT,)}
        self._words[piece] = tuple(word)
        return self._words[piece]

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, without SOT/EOT."""
        return [self.ids[s] for piece in PIECES.findall(clean(text)) for s in self._merge(piece)]

    @property
    def sot_id(self) -> int:
        return self.sot

    @property
    def eot_id(self) -> int:
        return self.eot

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` up to the first EOT (start token dropped), words joined
        by single spaces as CLIP's `</w>` marks them."""
        to_byte = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
        pieces = []
        for i in ids:
            if i == self.eot:
                break
            if i != self.sot and 0 <= i < len(self.names):
                pieces.append(self.names[i])
        words = "".join(pieces).split("</w>")
        text = [bytes(to_byte[ch] for ch in word).decode("utf-8", "replace") for word in words]
        return " ".join(w for w in text if w)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot][: self.context_length]
            ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out
