"""Image-text retrieval: recall@k in both directions, several captions per image.

Image-to-text counts a hit when any of the image's captions is among the k
highest-scoring texts; text-to-image when the caption's own image is among the
k highest-scoring images. Ties are broken by index (a stable sort), so the
metric is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_AT = (1, 5, 10)


def _normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based rank of the best-ranked positive in each row; `positives` is boolean."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(positives, order, axis=1)
    return np.argmax(hits, axis=1)


def retrieval_metrics(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_to_image: np.ndarray,
    recall_at: Sequence[int] = RECALL_AT,
) -> dict[str, float]:
    """`image_to_text/R@k` and `text_to_image/R@k`; text i describes image
    `text_to_image[i]`, and every image has at least one text."""
    owner = np.asarray(text_to_image, np.int64)
    n_images = len(image_embeddings)
    if len(owner) != len(text_embeddings):
        raise ValueError(f"{len(owner)} caption owners for {len(text_embeddings)} captions")
    without = np.setdiff1d(np.arange(n_images), owner)
    if len(without):
        raise ValueError(f"{len(without)} images have no caption, e.g. image {without[0]}")
    scores = _normalized(image_embeddings) @ _normalized(text_embeddings).T  # [images, texts]
    positives = owner[None, :] == np.arange(n_images)[:, None]
    i2t = _ranks(scores, positives)
    t2i = _ranks(scores.T, positives.T)
    metrics = {}
    for k in recall_at:
        metrics[f"image_to_text/R@{k}"] = float(np.mean(i2t < k))
        metrics[f"text_to_image/R@{k}"] = float(np.mean(t2i < k))
    return metrics


def flatten_captions(captions: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """All captions in order, and the image index of each."""
    texts, owner = [], []
    for image, image_captions in enumerate(captions):
        texts.extend(image_captions)
        owner.extend([image] * len(image_captions))
    return texts, np.asarray(owner, np.int64)
