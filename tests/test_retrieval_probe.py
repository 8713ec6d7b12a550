"""Retrieval recall and the linear probe against plain NumPy / scikit-learn."""

import jax
import numpy as np
import pytest

from clipjax.evaluate.features import embed_all
from clipjax.evaluate.linear_probe import linear_probe
from clipjax.evaluate.retrieval import flatten_captions, retrieval_metrics
from clipjax.parallel import batch_sharding, build_mesh, rules_table


def _reference_recall(image, text, owner, k):
    """One image or caption at a time, by counting better-scored candidates."""
    image = image / np.linalg.norm(image, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    i2t_hits = 0
    for i in range(len(image)):
        scores = [float(image[i] @ t) for t in text]
        ranked = sorted(range(len(text)), key=lambda j: (-scores[j], j))[:k]
        i2t_hits += any(owner[j] == i for j in ranked)
    t2i_hits = 0
    for j in range(len(text)):
        scores = [float(text[j] @ im) for im in image]
        ranked = sorted(range(len(image)), key=lambda i: (-scores[i], i))[:k]
        t2i_hits += owner[j] in ranked
    return i2t_hits / len(image), t2i_hits / len(text)


def _toy_set(rng, images=21, dim=6):
    image = rng.normal(size=(images, dim))
    counts = rng.integers(1, 4, size=images)  # 1 to 3 captions per image
    captions = [[f"caption {i}.{c}" for c in range(n)] for i, n in enumerate(counts)]
    texts, owner = flatten_captions(captions)
    text = image[owner] + 1.2 * rng.normal(size=(len(owner), dim))
    return image, text, owner, texts


def test_recall_equals_straightforward_numpy():
    image, text, owner, _ = _toy_set(np.random.default_rng(0))
    got = retrieval_metrics(image, text, owner)
    for k in (1, 5, 10):
        i2t, t2i = _reference_recall(image, text, owner, k)
        assert got[f"image_to_text/R@{k}"] == pytest.approx(i2t, abs=1e-12)
        assert got[f"text_to_image/R@{k}"] == pytest.approx(t2i, abs=1e-12)
    assert 0.2 < got["image_to_text/R@1"] < 1.0  # neither trivial nor perfect


def test_recall_on_8_devices_with_padded_batches():
    """Embeddings extracted in padded global batches on 8 devices give the same
    recall as embeddings computed directly (21 images and ~40 captions, batch 16)."""
    rng = np.random.default_rng(1)
    image_in, text_in, owner, _ = _toy_set(rng)
    weights = rng.normal(size=(6, 5)).astype(np.float32)
    encode = jax.jit(lambda x: jax.numpy.tanh(x @ weights))
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rules = rules_table((("batch", "data"),))
    shard = lambda ndim: batch_sharding(mesh, rules, ndim)
    image = embed_all(encode, image_in.astype(np.float32), 16, shard)
    text = embed_all(encode, text_in.astype(np.float32), 16, shard)
    assert image.shape == (21, 5) and text.shape == (len(owner), 5)
    direct_image = np.tanh(image_in.astype(np.float32) @ weights)
    direct_text = np.tanh(text_in.astype(np.float32) @ weights)
    np.testing.assert_allclose(image, direct_image, atol=1e-5)
    want = {}
    for k in (1, 5, 10):
        want[f"image_to_text/R@{k}"], want[f"text_to_image/R@{k}"] = _reference_recall(
            direct_image, direct_text, owner, k
        )
    assert retrieval_metrics(image, text, owner) == pytest.approx(want, abs=1e-12)


def test_retrieval_input_errors():
    with pytest.raises(ValueError, match="have no caption"):
        retrieval_metrics(np.ones((3, 2)), np.ones((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="3 caption owners for 2 captions"):
        retrieval_metrics(np.ones((3, 2)), np.ones((2, 2)), np.array([0, 1, 2]))


def test_linear_probe_equals_sklearn_with_the_chosen_c():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 10))
    train_y, test_y = rng.integers(0, 4, 300), rng.integers(0, 4, 100)
    train_x = centers[train_y] + 1.5 * rng.normal(size=(300, 10))
    test_x = centers[test_y] + 1.5 * rng.normal(size=(100, 10))
    got = linear_probe(train_x, train_y, test_x, test_y)
    assert got["C"] in np.logspace(-3, 3, 7)

    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    reference = LogisticRegression(C=got["C"], max_iter=1000)
    reference.fit((train_x - mean) / std, train_y)
    want = np.mean(reference.predict((test_x - mean) / std) == test_y)
    assert got["top1"] == pytest.approx(want, abs=1e-12)
    assert 0.5 < got["top1"] < 1.0

    with pytest.raises(ValueError, match="too few"):
        linear_probe(train_x[:2], train_y[:2], test_x, test_y)


def test_the_jax_fit_reaches_sklearns_optimum_on_many_classes():
    """The JAX L-BFGS fit minimises sklearn's objective: the same predictions and an
    objective no higher than sklearn's own fit, on 20 classes in 32 dimensions."""
    from sklearn.linear_model import LogisticRegression

    from clipjax.evaluate.linear_probe import _fit

    rng = np.random.default_rng(1)
    centers = rng.normal(size=(20, 32))
    y = rng.integers(0, 20, 2000)
    x = (centers[y] + 1.2 * rng.normal(size=(2000, 32))).astype(np.float32)
    c = 0.1
    ours = _fit(x, y, c, max_iter=1000)
    theirs = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x, y)

    def objective(weights, bias):
        logits = x.astype(np.float64) @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -c * log_p[np.arange(len(y)), y].sum() + 0.5 * np.sum(weights**2)

    mine = objective(ours.weights.astype(np.float64), ours.bias.astype(np.float64))
    reference = objective(theirs.coef_.T, theirs.intercept_)
    assert mine <= reference * (1 + 1e-5), (mine, reference)
    assert np.mean(ours.predict(x) == theirs.predict(x)) > 0.995
