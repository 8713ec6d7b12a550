"""CWCL: the loss and its gradients equal a direct B x B computation of Srinivasa et al.'s
weighted cross-entropy on 8 devices for every strategy, and the config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.losses import LossSpec, contrastive_loss
from clipjax.parallel import build_mesh

BATCH, DIM = 32, 8


def reference_cwcl(image, text, log_scale, weights_from):
    """Direct: soft targets w_ij = (<q_i, q_j> + 1) / 2 of the frozen tower's q, row-
    normalised, on the trained rows; one-hot CE the other way; the mean of the two."""
    frozen, trained = (image, text) if weights_from == "image" else (text, image)
    scores = jnp.exp(log_scale) * trained @ frozen.T  # trained rows, frozen columns
    q = jax.lax.stop_gradient(frozen)
    weights = (q @ q.T + 1) / 2
    targets = weights / weights.sum(1, keepdims=True)
    soft = -jnp.sum(targets * jax.nn.log_softmax(scores, axis=1), axis=1)
    hard = -jnp.diag(jax.nn.log_softmax(scores.T, axis=1))
    return (soft.mean() + hard.mean()) / 2


def _embeddings(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, DIM))
    y = x + rng.normal(size=(BATCH, DIM))
    return [(v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for v in (x, y)]


@pytest.mark.parametrize("weights_from", ["image", "text"])
@pytest.mark.parametrize(("strategy", "group"), [("gather", 8), ("ring", 8), ("grouped", 2)])
def test_cwcl_loss_and_gradients_equal_the_direct_computation(strategy, group, weights_from):
    mesh = build_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    spec = LossSpec(
        kind="cwcl", strategy=strategy, group_size=group, ring_chunk=2,
        cwcl_weights_from=weights_from,
    )  # fmt: skip
    image, text = _embeddings(1)
    log_scale = jnp.float32(np.log(12.0))

    def sharded(a, b, s):
        return contrastive_loss(
            a, b, s, mesh=mesh, batch_axes=("data", "fsdp"), spec=spec, metrics=False
        )[0]

    rows = NamedSharding(mesh, P(("data", "fsdp"), None))
    got, got_grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2)))(
        jax.device_put(image, rows), jax.device_put(text, rows), log_scale
    )
    groups = 8 // group
    size = BATCH // groups

    def reference(a, b, s):  # a grouped loss is the mean of its groups' losses
        parts = [
            reference_cwcl(
                a[g * size : (g + 1) * size], b[g * size : (g + 1) * size], s, weights_from
            )
            for g in range(groups)
        ]
        return sum(parts) / groups

    want, want_grads = jax.value_and_grad(reference, argnums=(0, 1, 2))(image, text, log_scale)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_frozen_tower_that_sees_every_example_alike_gives_uniform_targets():
    """Identical frozen rows make every w_ij = 1: the soft direction's target is uniform."""
    mesh = build_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    image, text = _embeddings(2)
    same = np.tile(image[:1], (BATCH, 1))  # every frozen row equal: w_ij = 1 everywhere
    spec = LossSpec(kind="cwcl", cwcl_weights_from="image")
    got = contrastive_loss(
        jnp.asarray(same), jnp.asarray(text), jnp.float32(0.0), mesh=mesh,
        batch_axes="data", spec=spec, metrics=False,
    )[0]  # fmt: skip
    scores = text @ same.T  # scale 1
    uniform = -np.mean(jax.nn.log_softmax(scores, axis=1))
    hard = -np.mean(np.diag(jax.nn.log_softmax(scores.T, axis=1)))
    np.testing.assert_allclose(got, (uniform + hard) / 2, rtol=2e-5)


def test_cwcl_needs_a_frozen_tower_to_take_its_weights_from():
    from clipjax.config import load_config
    from clipjax.validation import config_problems

    lit = load_config("configs/lit/vit_b16.py:tiny")
    lit.init_from = "/runs/clip/checkpoints"
    lit.loss.kind = "cwcl"
    lit.loss.cwcl_weights_from = "image"
    assert config_problems(lit, 1, 1, reads_data=False) == []
    lit.loss.cwcl_weights_from = "text"
    assert any(
        "loss.cwcl_weights_from='text' is not a frozen tower (model.frozen=('image',))" in p
        for p in config_problems(lit, 1, 1, reads_data=False)
    )
    lit.loss.cwcl_weights_from = None
    assert any(
        "loss.cwcl_weights_from is not set: expected str" in p
        for p in config_problems(lit, 1, 1, reads_data=False)
    )
    lit.loss.kind = "softmax"
    lit.loss.cwcl_weights_from = "image"
    assert any(
        "loss.cwcl_weights_from is not used by loss.kind='softmax'" in p
        for p in config_problems(lit, 1, 1, reads_data=False)
    )
