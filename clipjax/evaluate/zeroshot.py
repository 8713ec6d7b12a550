"""Zero-shot classification: class prompts embedded, averaged per class, then
images classified by cosine similarity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clipjax.data.tokenizers import Tokenizer


def class_embeddings(
    encode_text: Callable[[np.ndarray], np.ndarray],
    tokenizer: Tokenizer,
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
) -> np.ndarray:
    """`[classes, d]`: each prompt normalised, averaged per class, renormalised."""
    prompts = [template.replace("{c}", name) for name in classnames for template in templates]
    text = np.asarray(encode_text(tokenizer(prompts)), np.float64)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    per_class = text.reshape(len(classnames), len(templates), -1).mean(axis=1)
    return per_class / np.linalg.norm(per_class, axis=-1, keepdims=True)


def classification_metrics(
    image_embeddings: np.ndarray, class_embeds: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """top-1, top-5 (when there are more than 5 classes) and mean per-class recall."""
    image = np.asarray(image_embeddings, np.float64)
    image = image / np.linalg.norm(image, axis=-1, keepdims=True)
    logits = image @ class_embeds.T
    ranked = np.argsort(-logits, axis=1)
    predicted = ranked[:, 0]
    metrics = {"top1": float(np.mean(predicted == labels))}
    if class_embeds.shape[0] > 5:
        metrics["top5"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
    recalls = [np.mean(predicted[labels == c] == c) for c in np.unique(labels)]
    metrics["mean_per_class_recall"] = float(np.mean(recalls))
    return metrics
