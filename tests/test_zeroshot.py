"""Zero-shot metrics equal a plain NumPy computation; sharded extraction pads exactly."""

import jax
import numpy as np
import pytest

from clipjax.evaluate.features import embed_all
from clipjax.evaluate.zeroshot import class_embeddings, classification_metrics
from clipjax.parallel import batch_sharding, build_mesh, rules_table


def test_metrics_equal_straightforward_numpy():
    rng = np.random.default_rng(0)
    classes, images = 12, 101
    class_embeds = rng.normal(size=(classes, 8))
    class_embeds /= np.linalg.norm(class_embeds, axis=1, keepdims=True)
    labels = rng.integers(0, classes, images)
    image = class_embeds[labels] + 0.9 * rng.normal(size=(images, 8))
    got = classification_metrics(image, class_embeds, labels)

    scores = image @ class_embeds.T  # normalising images does not change the ranking
    top1 = np.mean([np.argmax(s) == y for s, y in zip(scores, labels, strict=True)])
    top5 = np.mean([y in np.argsort(s)[-5:] for s, y in zip(scores, labels, strict=True)])
    recalls = []
    for c in range(classes):
        members = labels == c
        if members.any():
            recalls.append(np.mean(np.argmax(scores[members], axis=1) == c))
    assert 0.2 < top1 < 0.95
    assert got["top1"] == top1
    assert got["top5"] == top5
    np.testing.assert_allclose(got["mean_per_class_recall"], np.mean(recalls))


def test_class_embeddings_average_normalised_prompts():
    vectors = {"a x": [3.0, 0.0], "b x": [0.0, 1.0], "a y": [1.0, 1.0], "b y": [0.0, 2.0]}

    class Tok:
        def __call__(self, prompts):
            return np.array(prompts)

    encode = lambda prompts: np.array([vectors[p] for p in prompts])
    got = class_embeddings(encode, Tok(), ("x", "y"), ("a {c}", "b {c}"))
    expected_x = np.array([1.0, 1.0]) / np.sqrt(2)
    expected_y = np.array([np.sqrt(0.5), 1 + np.sqrt(0.5)])
    np.testing.assert_allclose(got[0], expected_x)
    np.testing.assert_allclose(got[1], expected_y / np.linalg.norm(expected_y))


def test_embed_all_pads_the_last_batch_on_8_devices():
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rules = rules_table((("batch", "data"),))
    data = np.arange(21 * 3, dtype=np.float32).reshape(21, 3)
    encode = jax.jit(lambda x: x * 2.0 + 1.0)
    calls = []

    def counted(x):
        calls.append(x.shape)
        assert len(x.sharding.device_set) == 8
        return encode(x)

    out = embed_all(counted, data, 16, lambda ndim: batch_sharding(mesh, rules, ndim))
    np.testing.assert_array_equal(out, data * 2.0 + 1.0)
    assert calls == [(16, 3), (16, 3)]


def test_metrics_equal_clip_benchmarks_own_code_on_the_same_embeddings():
    """tests/fixtures/clip_benchmark_metrics/make_fixture.py ran CLIP_benchmark 1.6.2's
    `zeroshot_classification.evaluate` on these prompt and image embeddings."""
    from pathlib import Path

    fixture = np.load(
        Path(__file__).parent / "fixtures" / "clip_benchmark_metrics" / "zeroshot.npz"
    )
    index = {str(p): i for i, p in enumerate(fixture["prompts"])}
    classes = class_embeddings(
        lambda ids: fixture["prompt_embeddings"][ids[:, 0]],
        lambda prompts: np.array([[index[p]] for p in prompts]),
        tuple(str(c) for c in fixture["classes"]),
        tuple(str(t) for t in fixture["templates"]),
    )
    got = classification_metrics(fixture["images"], classes, fixture["labels"])
    assert got["top1"] == pytest.approx(float(fixture["metric_acc1"]), abs=1e-12)
    assert got["top5"] == pytest.approx(float(fixture["metric_acc5"]), abs=1e-12)
    assert got["mean_per_class_recall"] == pytest.approx(
        float(fixture["metric_mean_per_class_recall"]), abs=1e-12
    )
    assert 0.2 < got["top1"] < 0.5  # neither chance nor perfect: the ranks matter
