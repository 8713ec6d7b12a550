"""Training on different meshes gives the same losses, with parameters really sharded."""

import jax
import numpy as np
import pytest

from clipjax.config import apply_overrides
from clipjax.train.loop import train

MESHES = {  # name: (mesh, devices, extra overrides)
    "1 device": ({"data": 1, "fsdp": 1, "tensor": 1}, 1, []),
    "data=8": ({"data": 8, "fsdp": 1, "tensor": 1}, 8, []),
    "data=2 fsdp=4": ({"data": 2, "fsdp": 4, "tensor": 1}, 8, []),
    "data=2 fsdp=2 tensor=2": ({"data": 2, "fsdp": 2, "tensor": 2}, 8, []),
    "1 device, scanned+remat": (
        {"data": 1, "fsdp": 1, "tensor": 1},
        1,
        ["model.scan_layers=True", "model.remat=full"],
    ),
    "data=2 fsdp=2 tensor=2, scanned+remat": (
        {"data": 2, "fsdp": 2, "tensor": 2},
        8,
        ["model.scan_layers=True", "model.remat=full"],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_cache):
    from clipjax.config import load_config

    results = {}
    for name, (mesh, count, extra) in MESHES.items():
        config = load_config("configs/default.py:tiny")
        config.data.cache_dir = str(digits_cache)
        apply_overrides(
            config,
            [
                "train.steps=4",
                "train.log_every=1",
                *(f"mesh.{axis}={size}" for axis, size in mesh.items()),
                *extra,
            ],
        )
        with config.unlocked():
            del config.evals["digits"]
        workdir = tmp_path_factory.mktemp("run")
        results[name] = train(config, workdir, devices=jax.devices()[:count])
    return results


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_losses_equal_across_meshes(runs):
    """Scanned models initialise their stacked blocks with other keys, so they are
    compared with the scanned model on one device."""
    for name, result in runs.items():
        reference = np.asarray(
            runs["1 device" + (", scanned+remat" if "scanned" in name else "")].losses
        )
        assert len(reference) == 4 and np.all(np.isfinite(reference))
        assert reference[-1] < reference[0]
        np.testing.assert_allclose(result.losses, reference, rtol=2e-5, err_msg=name)


def test_final_parameters_equal_across_meshes(runs):
    reference = jax.device_get(runs["1 device"].params)
    for name, result in runs.items():
        if "scanned" in name:  # stacked blocks: compared through the losses above
            continue
        got = jax.device_get(result.params)
        jax.tree.map(
            lambda a, b, n=name: np.testing.assert_allclose(a, b, atol=2e-5, err_msg=n),
            got,
            reference,
        )


def shard_shape(array):
    return array.addressable_shards[0].data.shape


def test_parameters_are_sharded_by_the_rules(runs):
    params = runs["data=2 fsdp=2 tensor=2"].params
    block = params["image"]["encoder"]["blocks"][0]
    fc1 = block["mlp"]["fc1"]["kernel"]  # (embed, mlp) -> (fsdp, tensor)
    assert tuple(fc1.sharding.spec) == ("fsdp", "tensor")
    assert shard_shape(fc1) == (fc1.shape[0] // 2, fc1.shape[1] // 2)
    query = block["attn"]["query"]["kernel"]  # (embed, heads, kv) -> (fsdp, tensor, None)
    assert shard_shape(query) == (query.shape[0] // 2, query.shape[1] // 2, query.shape[2])
    vocab = params["text"]["token_embed"]["embedding"]  # (vocab, embed) -> (tensor, fsdp)
    assert shard_shape(vocab) == (vocab.shape[0] // 2, vocab.shape[1] // 2)
    assert params["logit_scale"].sharding.is_fully_replicated

    fsdp_only = runs["data=2 fsdp=4"].params["image"]["encoder"]["blocks"][0]["mlp"]["fc2"]
    kernel = fsdp_only["kernel"]  # (mlp, embed) -> (tensor=1, fsdp=4)
    assert shard_shape(kernel) == (kernel.shape[0], kernel.shape[1] // 4)


def test_scanned_blocks_are_sharded_with_a_replicated_layers_axis(runs):
    params = runs["data=2 fsdp=2 tensor=2, scanned+remat"].params
    fc1 = params["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]  # (layers, embed, mlp)
    assert tuple(fc1.sharding.spec) == (None, "fsdp", "tensor")
    assert shard_shape(fc1) == (fc1.shape[0], fc1.shape[1] // 2, fc1.shape[2] // 2)
