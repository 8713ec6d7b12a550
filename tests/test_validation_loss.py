"""The validation loss (`kind="contrastive_loss"`, `source="shards"`): logged during a
tiny training run on 8 devices, equal to CLIP's loss computed directly from the trained
model's embeddings of the same held-out samples, and its entry checked."""

import io
import json
import math
import tarfile

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

import clipjax
from clipjax.cli import main
from clipjax.data.writer import build_digits_shards

BATCH, BATCHES = 32, 3


def _held_out_pairs(urls, count):
    """The first `count` (image, caption) pairs of the shards, read with tarfile."""
    pairs = []
    for url in urls:
        with tarfile.open(url) as tar:
            members = {}
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key in members:  # tar order
            image = Image.open(io.BytesIO(members[key]["png"])).convert("RGB")
            pairs.append((image, members[key]["txt"].decode()))
            if len(pairs) == count:
                return pairs
    raise AssertionError("not enough held-out samples")


def _clip_loss(image: np.ndarray, text: np.ndarray, scale: float) -> float:
    logits = scale * image.astype(np.float64) @ text.astype(np.float64).T
    rows = np.arange(len(logits))

    def cross_entropy(x):
        x = x - x.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(x).sum(axis=1)) - x[rows, rows]))

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def test_validation_loss_is_logged_and_equals_clips_loss_on_the_held_out_batches(
    tmp_path, digits_cache
):
    shards = build_digits_shards(digits_cache)
    urls = shards.train_urls()
    train_spec = f"{shards.root / 'train'}/{{00000..00011}}.tar"
    held_out = f"{shards.root / 'train'}/{{00015..00016}}.tar"  # never trained on
    work = tmp_path / "run"
    args = [
        "train", "--config", "configs/default.py:tiny", "--workdir", str(work),
        f"--config.data.cache_dir={digits_cache}", "--config.data.source=shards",
        f"--config.data.train_shards={train_spec}", "--config.train.steps=12",
        "--config.train.log_every=4",
    ]  # fmt: skip
    args += [  # the entry comes from the command line, no config file
        "--config.evals.val.kind=contrastive_loss", "--config.evals.val.source=shards",
        f"--config.evals.val.shards={held_out}", f"--config.evals.val.batches={BATCHES}",
        f"--config.evals.val.batch_size={BATCH}", "--config.evals.val.every=4",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    logged = {
        row["step"]: row["contrastive_loss/val/loss"]
        for row in rows
        if "contrastive_loss/val/loss" in row
    }
    assert sorted(logged) == [0, 4, 8, 12]
    assert abs(logged[0] - math.log(BATCH)) < 0.5  # untrained: about chance
    assert logged[12] < logged[0] - 0.15  # it learns, and the held-out loss shows it

    model = clipjax.load(work)
    pairs = _held_out_pairs(
        [u for u in urls if u.endswith(("00015.tar", "00016.tar"))], BATCH * BATCHES
    )
    images = model.encode_image(np.stack([model.preprocess(im) for im, _ in pairs]))
    texts = model.encode_text(model.tokenize([caption for _, caption in pairs]))
    expected = np.mean(
        [
            _clip_loss(
                images[b * BATCH : (b + 1) * BATCH],
                texts[b * BATCH : (b + 1) * BATCH],
                model.logit_scale,
            )
            for b in range(BATCHES)
        ]
    )
    assert logged[12] == pytest.approx(expected, abs=2e-4)

    # `clipjax eval` on the checkpoint repeats it (the run's config.json holds the entry)
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(work), "--out", str(out)]) == 0
    again = json.loads(out.read_text())["contrastive_loss/val/loss"]
    assert again == pytest.approx(logged[12], abs=1e-6)


def test_the_validation_entry_is_checked():
    from clipjax.evaluate.fields import eval_problems

    evals = ConfigDict(
        dict(
            a=dict(kind="contrastive_loss", source="digits"),
            b=dict(kind="zeroshot", source="shards", shards="/x/{0..1}.tar"),
            c=dict(kind="contrastive_loss", source="shards", batches=0),
            d=dict(kind="contrastive_loss", source="shards", shards="/x/0.tar", split="val"),
        )
    )
    assert eval_problems(evals) == [
        "evals.a: kind 'contrastive_loss' with source 'digits'; kind 'contrastive_loss' takes "
        "source 'shards' (held-out shards), and only it does",
        "evals.b: kind 'zeroshot' with source 'shards'; kind 'contrastive_loss' takes "
        "source 'shards' (held-out shards), and only it does",
        "evals.c.source='shards' needs evals.c.shards",
        "evals.c.batches=0 must be positive",
    ]
