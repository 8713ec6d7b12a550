"""Captioning a trained CoCa through `clipjax.load(...).caption` and `clipjax caption`:
the cached, jitted, batched path equals plain uncached greedy decoding."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import clipjax
from clipjax.checkpoint import read_params
from clipjax.cli import main
from clipjax.data.pixels import pixel_normalizer
from clipjax.data.tokenizers import ByteTokenizer
from clipjax.interop.params_tree import build_with_params, unroll_layers
from clipjax.models.generate import GREEDY_STATIC, greedy_captions


@pytest.fixture(scope="module")
def coca_run(tmp_path_factory, digits_cache):
    work = tmp_path_factory.mktemp("coca") / "run"
    args = ["train", "--config", "configs/coca/base.py:tiny", "--workdir", str(work)]
    overrides = [f"--config.data.cache_dir={digits_cache}", "--config.train.steps=4"]
    assert main([*args, *overrides]) == 0
    return work


def _folder(tmp_path, count=5):
    rng = np.random.default_rng(0)
    for n in range(count):
        size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(tmp_path / f"{n}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG nothing")
    return tmp_path


def test_captions_equal_plain_greedy_decoding(coca_run, tmp_path):
    model = clipjax.load(coca_run)
    folder = _folder(tmp_path)
    images = [Image.open(folder / f"{n}.png") for n in range(5)]
    got = model.caption(images, max_len=12)
    crops = np.stack([model.preprocess(image) for image in images])
    flat, _ = read_params(coca_run)
    reference = build_with_params(model.config.model, unroll_layers(flat, set()), "run")
    normalize = pixel_normalizer(model.config.data.mean, model.config.data.std)
    greedy = nnx.jit(greedy_captions, static_argnames=GREEDY_STATIC)
    tokenizer = ByteTokenizer(model.config.tokenizer.context_length)
    kw = dict(sot_id=tokenizer.SOT, eot_id=tokenizer.EOT, max_len=12, cache=False)
    tokens = np.asarray(greedy(reference, normalize(crops), **kw))
    assert got == [tokenizer.decode(row[1:]) for row in tokens]
    assert any(got)  # something was generated
    assert len(model.caption(images[:2], max_len=12, beams=3)) == 2


@pytest.mark.slow  # the CLI over the caption path the test above checks by default
def test_caption_command_writes_jsonl_and_names_the_unreadable(coca_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    folder = _folder(tmp_path / "in")
    out = tmp_path / "captions.jsonl"
    args = ["caption", "--model", str(coca_run), "--images", str(folder), "--max-len", "12"]
    assert main([*args, "--out", str(out)]) == 1
    assert "broken.png" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    captioned = {r["key"]: r["caption"] for r in rows if "caption" in r}
    assert sorted(captioned) == [f"{n}.png" for n in range(5)]
    assert [r["key"] for r in rows if "error" in r] == ["broken.png"]
    model = clipjax.load(coca_run)
    want = model.caption([Image.open(folder / key) for key in sorted(captioned)], max_len=12)
    assert [captioned[k] for k in sorted(captioned)] == want
    (folder / "broken.png").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split("\t")[0] == "0.png" and len(printed) == 5


def test_only_coca_captions(trained_run):
    with pytest.raises(ValueError, match=r"a 'clip' model has no caption decoder"):
        clipjax.load(trained_run).caption(np.zeros((1, 32, 32, 3), np.uint8))
