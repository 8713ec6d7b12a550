"""Tokenizers: CLIP BPE ids equal OpenCLIP's; tokenizer.json and SentencePiece files
give their libraries' ids with clipjax's truncation and padding."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from clipjax.config import ConfigError
from clipjax.data.clip_bpe import BUNDLED_VOCAB, ClipBpeTokenizer
from clipjax.data.tokenizers import HFTokenizer, SentencePieceTokenizer, build_tokenizer
from clipjax.validation import validate

REFERENCE = Path(__file__).parent / "fixtures" / "clip_bpe_reference.json"
CORPUS = [
    f"a {style} photo of the number {name}."
    for style in ("blurry", "bright", "dark", "small", "large", "handwritten", "pixelated")
    for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
]


def test_clip_bpe_equals_openclip_on_varied_text():
    reference = json.loads(REFERENCE.read_text())
    tokenizer = ClipBpeTokenizer(77)
    assert (tokenizer.sot, tokenizer.eot, tokenizer.vocab_size) == (49406, 49407, 49408)
    assert (reference["sot"], reference["eot"], reference["vocab_size"]) == (49406, 49407, 49408)
    texts = [case["text"] for case in reference["cases"]]
    ids = tokenizer(texts)
    assert ids.shape == (len(texts), 77) and ids.dtype == np.int32
    for case, row in zip(reference["cases"], ids, strict=True):
        assert row.tolist() == case["ids"], case["text"]
    long = [row for row in ids if row[-1] != 0]
    assert long and all(row[0] == 49406 and row[-1] == 49407 for row in long)


def test_clip_bpe_from_a_vocab_path_and_short_contexts(tmp_path):
    explicit = ClipBpeTokenizer(8, vocab_path=BUNDLED_VOCAB)
    row = explicit(["a photo of a cat sitting on a mat"])[0]
    assert row.tolist()[0] == 49406 and row.tolist()[-1] == 49407 and 0 not in row
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipBpeTokenizer(77, vocab_path=tmp_path / "missing.txt.gz")


def _hf_file(tmp_path: Path) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=specials)
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    path = tmp_path / "tokenizer.json"
    backend.save(str(path))
    return str(path)


def test_hf_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer

    path = _hf_file(tmp_path)
    reference = Tokenizer.from_file(path)
    tokenizer = HFTokenizer(path, context_length=16)
    texts = ["a dark photo of the number seven.", "seven", ""]
    ids = tokenizer(texts)
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size == reference.get_vocab_size()
    for text, row in zip(texts, ids, strict=True):
        expected = reference.encode(text).ids
        assert row.tolist() == expected + [0] * (16 - len(expected))
    cut = HFTokenizer(path, context_length=5)(["a dark photo of the number seven."])[0]
    body = reference.encode("a dark photo of the number seven.").ids[1:-1]
    assert cut.tolist() == [2, *body[:3], 3]  # [CLS] ... [SEP] kept when cut


def _sentencepiece_file(tmp_path: Path) -> str:
    import sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3))
    prefix = tmp_path / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=40,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=2,
        minloglevel=2,
    )
    return f"{prefix}.model"


def test_sentencepiece_model(tmp_path):
    import sentencepiece

    path = _sentencepiece_file(tmp_path)
    reference = sentencepiece.SentencePieceProcessor(model_file=path)
    tokenizer = SentencePieceTokenizer(path, context_length=64)
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.vocab_size) == (0, 2, 40)
    texts = ["a bright photo of the number four.", "nine"]
    for text, row in zip(texts, tokenizer(texts), strict=True):
        expected = [*reference.encode(text), 2]
        assert len(expected) < 64 and row.tolist() == expected + [0] * (64 - len(expected))
    cut = SentencePieceTokenizer(path, context_length=4)(texts[:1])[0]
    assert cut.tolist() == [*reference.encode(texts[0])[:3], 2]


def _tokenizer_config(kind: str, path: str = "", length: int = 16) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(kind=kind, path=path, context_length=length, lowercase=False)
    )


def test_build_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"needs tokenizer\.path"):
        build_tokenizer(_tokenizer_config("hf"))
    with pytest.raises(FileNotFoundError, match=r"no SentencePiece \.model"):
        build_tokenizer(_tokenizer_config("sentencepiece", str(tmp_path / "x.model")))
    with pytest.raises(ValueError, match="expected one of"):
        build_tokenizer(_tokenizer_config("wordpiece"))
    with pytest.raises(ValueError, match=r"tokenizer.lowercase=False: tokenizer.kind='clip'"):
        build_tokenizer(_tokenizer_config("clip", length=77))
    clip = _tokenizer_config("clip", length=77)
    clip.lowercase = True
    assert build_tokenizer(clip).vocab_size == 49408
    with pytest.raises(ValueError, match=r"tokenizer.path='v.txt' is not used by .*'bytes'"):
        build_tokenizer(_tokenizer_config("bytes", "v.txt"))


def test_argmax_pooling_with_another_vocabulary_is_a_config_error(tmp_path, tiny_config):
    tiny_config.tokenizer.kind = "hf"
    tiny_config.tokenizer.path = _hf_file(tmp_path)
    with pytest.raises(ConfigError, match=r"model\.text\.pool='last' and model\.text\.pad_id=0"):
        validate(tiny_config, 8)
    tiny_config.model.text.pool = "last"
    validate(tiny_config, 8)


def test_end_positions():
    from clipjax.models.text import end_positions

    tokens = np.array([[5, 9, 300, 0, 0, 0], [3, 4, 8, 6, 300, 0], [5, 9, 1, 0, 0, 0]])
    assert end_positions(tokens, "argmax").tolist() == [2, 4, 1]
    assert end_positions(tokens, "last").tolist() == [2, 4, 2]
    assert end_positions(np.array([[2, 5, 7, 1, 1]]), "last", pad_id=1).tolist() == [2]
