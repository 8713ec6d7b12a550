"""FLIP's image-token masking (`model.image.patch_dropout`): training drops a random
subset of each image's patch tokens, eval drops none, and the masks follow the example
across meshes and accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.config import apply_overrides, load_config
from clipjax.flops import image_tower_flops
from clipjax.losses import LossSpec
from clipjax.models import build_model
from clipjax.models.vit import example_keys, kept_patch_indices
from clipjax.parallel import build_mesh, rules_table
from clipjax.train.objective import ObjectiveSpec, make_objective
from clipjax.train.optim import build_optimizer
from clipjax.train.state import create_train_state
from clipjax.train.step import make_grad_fn
from clipjax.validation import config_problems

PATCH = 8  # 32 px images: a 4 x 4 grid of 16 patches, 8 kept at 0.5


def model_config(pool="gap", dropout=0.5, scan=False, remat="none"):
    config = load_config("configs/default.py:tiny")
    apply_overrides(
        config,
        [
            f"model.image.pool={pool}",
            f"model.image.patch_dropout={dropout}",
            f"model.scan_layers={scan}",
            f"model.remat={remat}",
        ],
    )
    return config


def model_of(config):
    with nnx.use_eager_sharding(False):
        return build_model(config.model, nnx.Rngs(0))


def images(count=4, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(count, 32, 32, 3)), jnp.float32)


def with_patch_changed(x, image: int, patch: int, by: float = 3.0):
    row, col = divmod(int(patch), 32 // PATCH)
    rows, cols = slice(row * PATCH, (row + 1) * PATCH), slice(col * PATCH, (col + 1) * PATCH)
    return x.at[image, rows, cols].add(by)


@pytest.mark.parametrize(
    "pool, scan, remat", [("cls", False, "none"), ("gap", True, "full"), ("map", False, "dots")]
)
def test_training_sees_only_the_kept_patches_and_eval_sees_all(pool, scan, remat):
    masked = model_of(model_config(pool, 0.5, scan, remat))
    plain = model_of(model_config(pool, 0.0, scan, remat))
    x = images()
    # eval: no keys, no masking, the same function as without patch dropout
    np.testing.assert_array_equal(masked.image(x), plain.image(x))

    keys = example_keys(jax.random.key(7), jnp.arange(4))
    kept = np.asarray(kept_patch_indices(keys, 16, 8))
    assert kept.shape == (4, 8) and all(len(set(row)) == 8 for row in kept)
    assert len({tuple(row) for row in kept}) == 4  # each image draws its own subset
    tokens = masked.image.tokens(x, keys)
    assert tokens.shape[1] == 8 + (pool == "cls")  # the class token is always kept

    trained = np.asarray(masked.image(x, keys))
    dropped = next(p for p in range(16) if p not in kept[0])
    unchanged = masked.image(with_patch_changed(x, 0, dropped), keys)
    np.testing.assert_allclose(unchanged, trained, rtol=1e-6, atol=1e-6)
    changed = np.asarray(masked.image(with_patch_changed(x, 0, kept[0][0]), keys))
    assert np.abs(changed[0] - trained[0]).max() > 1e-3
    np.testing.assert_allclose(changed[1:], trained[1:], rtol=1e-6, atol=1e-6)


def grads(config, mesh_shape: dict, accum: int):
    mesh = build_mesh(mesh_shape)
    axes = ("data", "fsdp")
    tx = build_optimizer(config.optim, 10)
    spec, state, _ = create_train_state(
        config.model, 0, tx, mesh, rules_table(config.sharding_rules)
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
        "text": rng.integers(1, 250, size=(32, 32)).astype(np.int32),
    }
    batch["text"][:, -1] = 258
    placed = {k: jax.device_put(v, NamedSharding(mesh, P(axes))) for k, v in batch.items()}
    objective = make_objective(ObjectiveSpec(), LossSpec(), mesh, axes)
    grad_fn = make_grad_fn(spec, objective, mesh, axes, accum_steps=accum)
    return jax.device_get(jax.jit(grad_fn)(state.params, placed, jax.random.key(3)))


def test_masks_follow_the_example_across_meshes_and_accumulation():
    """8 batch shards in one pass vs 2 batch shards (x 4 tensor) in 4 micro-batches:
    each example draws the same mask, so the loss and gradients are equal."""
    config = model_config("cls", 0.5)
    loss_1, _, grads_1 = grads(config, {"data": 8, "fsdp": 1, "tensor": 1}, 1)
    loss_k, _, grads_k = grads(config, {"data": 2, "fsdp": 1, "tensor": 4}, 4)
    np.testing.assert_allclose(loss_k, loss_1, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), grads_k, grads_1
    )
    loss_0, _, _ = grads(model_config("cls", 0.0), {"data": 8, "fsdp": 1, "tensor": 1}, 1)
    assert abs(float(loss_0) - float(loss_1)) > 1e-4  # the step does mask


def test_coca_trains_on_the_kept_patches():
    config = load_config("configs/coca/base.py:tiny")
    apply_overrides(config, ["model.image.patch_dropout=0.75"])
    model = model_of(config)
    tokens = jnp.asarray(np.random.default_rng(1).integers(1, 250, size=(4, 32)), jnp.int32)
    batch = {"image": images(), "text": tokens, "row": jnp.arange(4)}
    masked = model.train_outputs(batch, jax.random.key(0))
    full = model.train_outputs(batch)
    assert np.isfinite(float(masked["caption_loss"]))
    assert float(masked["caption_loss"]) != float(full["caption_loss"])
    np.testing.assert_array_equal(model.encode_image(batch["image"]), full["embeddings"]["image"])


def test_patch_dropout_is_counted_and_checked():
    config = model_config("cls", 0.5)
    image = config.model.image
    half = image_tower_flops(image, 64, train=True)
    with config.unlocked():
        image.patch_dropout = 0.0
    full = image_tower_flops(image, 64, train=True)
    assert full == image_tower_flops(image, 64)  # eval encodes every patch
    # 17 tokens -> 9 (class token kept): the blocks' share shrinks, the patch embedding not
    blocks = lambda n: 2 * n * (4 * 64 * 64 + 2 * 64 * 128) + 4 * n * n * 64
    assert full - half == blocks(17) - blocks(9)
    bad = model_config("cls", 1.0)
    assert any(
        "model.image.patch_dropout=1.0 must be in [0, 1)" in p for p in config_problems(bad, 8, 1)
    )
