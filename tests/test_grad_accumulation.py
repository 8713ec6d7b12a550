"""GradCache accumulation: k micro-batches give the full-batch gradients on 8 devices."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clipjax.config import load_config
from clipjax.data.pixels import pixel_normalizer
from clipjax.losses import LossSpec
from clipjax.parallel import build_mesh, rules_table
from clipjax.train.objective import ObjectiveSpec, make_objective
from clipjax.train.optim import build_optimizer
from clipjax.train.program import packed_words
from clipjax.train.state import create_train_state
from clipjax.train.step import make_grad_fn, merge_micro, split_micro


def test_split_and_merge_micro_batches_are_inverse_and_keep_rows_on_their_shard():
    x = np.arange(32)
    micro = split_micro(x, shards=8, k=2)
    assert micro.shape == (2, 16)
    assert micro[0, :2].tolist() == [0, 1] and micro[1, :2].tolist() == [2, 3]
    np.testing.assert_array_equal(merge_micro(micro, shards=8), x)


def setup(bias_init):
    config = load_config("configs/default.py:tiny")
    config.model.logit_bias_init = bias_init
    mesh = build_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    rules = rules_table(config.sharding_rules)
    tx = build_optimizer(config.optim, 10)
    spec, state, _ = create_train_state(config.model, 0, tx, mesh, rules)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
        "text": rng.integers(1, 250, size=(32, 32)).astype(np.int32),
    }
    batch["text"][:, -1] = 258  # EOT, the pooled position
    placed = {
        k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp")))) for k, v in batch.items()
    }
    return spec, mesh, state.params, placed


@pytest.mark.parametrize("loss", [LossSpec(), LossSpec(kind="sigmoid", strategy="ring")])
def test_accumulated_gradients_equal_full_batch(loss):
    spec, mesh, params, batch = setup(-2.0 if loss.kind == "sigmoid" else None)
    results = {}
    for k in (1, 2, 4):
        objective = make_objective(ObjectiveSpec(kind=loss.kind), loss, mesh, ("data", "fsdp"))
        grad_fn = make_grad_fn(spec, objective, mesh, ("data", "fsdp"), accum_steps=k)
        results[k] = jax.device_get(jax.jit(grad_fn)(params, batch, jax.random.key(0)))
    loss_1, _, grads_1 = results[1]
    assert float(np.abs(grads_1["logit_scale"])) > 0
    assert ("logit_bias" in grads_1) == (loss.kind == "sigmoid")
    for k in (2, 4):
        loss_k, _, grads_k = results[k]
        np.testing.assert_allclose(loss_k, loss_1, rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), grads_k, grads_1
        )


def test_host_streamed_accumulation_equals_full_batch_with_uint8_pixels():
    """`host_batch`: the images wait in pinned host memory, split `[k, B/k, ...]` on the
    host, and each GradCache pass moves one micro-batch to the devices; pixels are
    normalised per micro-batch. Loss and gradients equal the full batch's."""
    spec, mesh, params, _ = setup(None)
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.integers(0, 256, size=(32, 32, 32, 3), dtype=np.uint8),
        "text": rng.integers(1, 250, size=(32, 32)).astype(np.int32),
    }
    batch["text"][:, -1] = 258
    axes = ("data", "fsdp")
    normalize = pixel_normalizer((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    objective = make_objective(ObjectiveSpec(), LossSpec(strategy="ring"), mesh, axes)

    def grads(k, host):
        in_host = {"image": (32, 32, 3)} if host else None
        fn = make_grad_fn(spec, objective, mesh, axes, k, normalize=normalize, host_entries=in_host)
        placed = {n: jax.device_put(v, NamedSharding(mesh, P(axes))) for n, v in batch.items()}
        if host:
            sharding = NamedSharding(mesh, P(None, axes), memory_kind="pinned_host")
            words = packed_words(batch["image"])
            placed["image"] = jax.device_put(split_micro(words, 8, k), sharding)
        return jax.device_get(jax.jit(fn)(params, placed, jax.random.key(0)))

    loss_1, _, grads_1 = grads(1, host=False)
    for k in (2, 4):
        loss_k, _, grads_k = grads(k, host=True)
        np.testing.assert_allclose(loss_k, loss_1, rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), grads_k, grads_1
        )


def test_trainer_with_host_batch_trains_like_the_batch_on_the_devices(tiny_config, tmp_path):
    """`clipjax train` with `train.host_batch`: the loader's batches are packed and split
    on the host (`StepProgram.place_batch`) and the losses equal those of the same
    accumulation with the batch on the devices."""
    from clipjax.config import apply_overrides
    from clipjax.train.loop import train

    losses = {}
    for host in (False, True):
        config = tiny_config.copy_and_resolve_references()
        apply_overrides(
            config,
            ["train.steps=3", "train.log_every=1", "train.accum_steps=2",
             f"train.host_batch={host}", "checkpoint.async_save=False"],
        )  # fmt: skip
        with config.unlocked():
            config.evals = {}
        losses[host] = train(config, tmp_path / str(host)).losses
    assert len(losses[True]) == 3
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-6)
