"""Linear probe: logistic regression on frozen image features, its regularisation
strength chosen on a validation split of the training features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))


def _fit(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter).fit(features, labels)


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-8
    return [(x - mean) / std for x in (train, *others)]


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    c_grid: Sequence[float] = C_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, float]:
    """Test top-1 of the probe refit on all training features with the C that scored
    best on a held-out `validation_fraction`; also reports that C and its accuracy."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1)")
    train = np.asarray(train_features, np.float32)  # half the memory of float64; sklearn's
    test = np.asarray(test_features, np.float32)  # lbfgs solver keeps float32
    order = np.random.default_rng(seed).permutation(len(train))
    cut = round(len(train) * (1 - validation_fraction))
    fit_idx, val_idx = order[:cut], order[cut:]
    if len(val_idx) == 0 or len(np.unique(train_labels[fit_idx])) < 2:
        raise ValueError(f"{len(train)} training examples are too few for a validation split")
    fit_x, val_x = _standardize(train[fit_idx], train[val_idx])
    scores = []
    for c in c_grid:
        model = _fit(fit_x, train_labels[fit_idx], c, max_iter)
        scores.append(float(np.mean(model.predict(val_x) == train_labels[val_idx])))
    best = int(np.argmax(scores))
    train_x, test_x = _standardize(train, test)
    model = _fit(train_x, train_labels, c_grid[best], max_iter)
    return {
        "top1": float(np.mean(model.predict(test_x) == test_labels)),
        "C": float(c_grid[best]),
        "validation_top1": scores[best],
    }
