"""Every model family trains through the same trainer on 1 device and on 8 devices
(fsdp=4 x tensor=2) with the same losses, and its parameters follow the sharding rules.
ALIGN and CoCa, the slowest to compile on CPU, run with `-m slow`; CoCa's sharded
training and ALIGN's towers also have their own default tests."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from clipjax.checkpoint import flat_params, read_params
from clipjax.config import apply_overrides, load_config
from clipjax.models.spec import model_spec
from clipjax.parallel import build_mesh, logical_to_mesh, rules_table
from clipjax.train.loop import train
from clipjax.train.optim import build_optimizer
from clipjax.train.state import _new_params

FAMILIES = {
    "clip": "configs/clip/tiny.py",
    "siglip": "configs/siglip/vit_b16.py:tiny",
    "align": "configs/align/efficientnet_b3.py:tiny",
    "lit": "configs/lit/vit_b16.py:tiny",
    "coca": "configs/coca/base.py:tiny",
    "symile": "configs/symile/xor.py:tiny",
}
SLOW_FAMILIES = {"align", "coca"}
MESHES = {"1 device": (1, 1, 1), "fsdp=4 tensor=2": (1, 4, 2)}
STEPS = 3


def family_config(name, digits_cache, mesh, extra=()):
    config = load_config(FAMILIES[name])
    data, fsdp, tensor = mesh
    overrides = [f"train.steps={STEPS}", "train.log_every=1", "checkpoint.async_save=False"]
    overrides += [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", *extra]
    apply_overrides(config, overrides)
    with config.unlocked():
        if "cache_dir" in config.data:  # Symile's XOR task reads no files
            config.data.cache_dir = str(digits_cache)
        config.evals = {}
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_cache):
    """`runs(family, mesh_name) -> (config, result)`, each trained once per module.
    LiT locks the image tower of the 1-device CLIP run."""
    results, workdirs = {}, {}

    def run(family: str, mesh_name: str):
        if (family, mesh_name) not in results:
            mesh = MESHES[mesh_name]
            if family == "lit":
                run("clip", "1 device")
                extra = [f"init_from={workdirs['clip', '1 device']}"]
            else:
                extra = []
            config = family_config(family, digits_cache, mesh, extra)
            workdir = workdirs[family, mesh_name] = tmp_path_factory.mktemp(f"{family}")
            devices = jax.devices()[: int(np.prod(mesh))]
            results[family, mesh_name] = (config, train(config, workdir, devices=devices))
        return results[family, mesh_name]

    return run


def family_params():
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW_FAMILIES else name
        for name in sorted(FAMILIES)
    ]


@pytest.mark.parametrize("family", family_params())
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_same_losses_on_one_and_eight_devices(runs, family):
    _, single = runs(family, "1 device")
    _, sharded = runs(family, "fsdp=4 tensor=2")
    assert len(single.losses) == STEPS and np.all(np.isfinite(single.losses))
    np.testing.assert_allclose(sharded.losses, single.losses, rtol=1e-5, err_msg=family)


@pytest.mark.parametrize("family", family_params())
def test_parameters_are_sharded_by_the_rules(runs, family):
    config, result = runs(family, "fsdp=4 tensor=2")
    mesh = build_mesh(config.mesh, jax.devices()[:8])
    rules = rules_table(config.sharding_rules)
    logical = model_spec(config.model).logical_specs
    sharded_dims = 0

    def check(path, param, spec):
        nonlocal sharded_dims
        expected = NamedSharding(mesh, logical_to_mesh(spec, rules))
        name = jax.tree_util.keystr(path)
        assert param.sharding.is_equivalent_to(expected, param.ndim), name
        shard = param.addressable_shards[0].data.shape
        sharded_dims += sum(s != full for s, full in zip(shard, param.shape, strict=True))

    jax.tree_util.tree_map_with_path(
        check, result.params, logical, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )
    assert sharded_dims > 0, f"{family}: no parameter is split over the mesh"


def test_lit_image_tower_is_loaded_and_never_updated(runs):
    config, result = runs("lit", "1 device")
    loaded, _ = read_params(config.init_from)  # the 1-device CLIP run's checkpoint
    initial = flat_params(_new_params(config.model, config.seed))
    trained = flat_params(result.params)
    image = [name for name in loaded if name.startswith("image/")]
    assert image
    for name in image:  # the checkpoint's values, not the fresh init, and never updated
        np.testing.assert_array_equal(trained[name], loaded[name], err_msg=name)
        assert not np.array_equal(trained[name], initial[name]) or loaded[name].std() == 0
    text = [name for name in trained if name.startswith("text/")]
    moved = [name for name in text if not np.allclose(trained[name], initial[name])]
    assert len(moved) == len(text), sorted(set(text) - set(moved))


def test_lit_keeps_no_optimizer_state_for_the_locked_tower():
    config = load_config(FAMILIES["lit"])
    tx = build_optimizer(config.optim, 10, tuple(config.model.frozen))
    params = {
        "image": {"w": np.ones((64, 64), np.float32)},
        "text": {"w": np.ones((64, 64), np.float32)},
    }
    state = tx.init(params)
    sizes = sum(leaf.size for leaf in jax.tree.leaves(state))
    text_moments = 2 * 64 * 64  # AdamW's mu and nu for the text matrix only
    assert text_moments <= sizes < text_moments + 16
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), state, params)
    assert not np.any(np.asarray(updates["image"]["w"]))
