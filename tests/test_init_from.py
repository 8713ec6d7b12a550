"""LiT from published weights: `init_from` reads an HF CLIP directory's image tower."""

import jax
import numpy as np
import pytest
from flax import nnx

from clipjax.config import apply_overrides, load_config
from clipjax.interop.hf_clip import save_hf_clip
from clipjax.interop.params_tree import unrolled_params
from clipjax.models import build_model
from clipjax.train.loop import train

HF_SHAPED = ["model.image.pool='cls'", "model.image.ln_pre=True", "model.image.patch_bias=False"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    config = load_config("configs/clip/tiny.py")
    apply_overrides(config, HF_SHAPED)
    with nnx.use_eager_sharding(False):
        model = build_model(config.model, nnx.Rngs(7))
    unrolled = unrolled_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return save_hf_clip(unrolled, config.model, tmp_path_factory.mktemp("hf")), unrolled


def lit_config(hf_path, digits_cache, extra=()):
    config = load_config("configs/lit/vit_b16.py:tiny")
    overrides = [*HF_SHAPED, f"init_from='{hf_path}'", "train.steps=3", *extra]
    apply_overrides(config, overrides)
    with config.unlocked():
        config.data.cache_dir = str(digits_cache)
        config.evals = {}
    return config


def test_lit_trains_on_an_hf_image_tower_without_changing_it(hf_dir, digits_cache, tmp_path):
    path, exported = hf_dir
    result = train(lit_config(path, digits_cache), tmp_path, devices=jax.devices()[:1])
    trained = unrolled_params(result.params)
    image = [name for name in exported if name.startswith("image/")]
    assert len(image) > 10
    for name in image:
        np.testing.assert_array_equal(trained[name], exported[name], err_msg=name)
    text = [name for name in exported if name.startswith("text/")]
    assert all(not np.array_equal(trained[n], exported[n]) for n in text)  # fresh, not read


def test_an_hf_tower_of_another_shape_is_refused_by_field(hf_dir, digits_cache, tmp_path):
    path, _ = hf_dir
    config = lit_config(path, digits_cache, ["model.image.act='quick_gelu'"])
    with pytest.raises(ValueError, match=r"model\.image\.act='quick_gelu' but .* has 'gelu'"):
        train(config, tmp_path, devices=jax.devices()[:1])


def _initial(config) -> dict:
    from clipjax.parallel import build_mesh, rules_table
    from clipjax.train.init_from import initial_params
    from clipjax.train.optim import build_optimizer
    from clipjax.train.state import plan_train_state

    tx = build_optimizer(config.optim, config.train.steps)
    mesh = build_mesh(config.mesh, jax.devices())
    plan = plan_train_state(config.model, 0, tx, mesh, rules_table(config.sharding_rules))
    return unrolled_params(initial_params(config, plan.abstract.params))


def test_a_run_continues_at_another_resolution_length_and_layer_layout(tiny_config, tmp_path):
    """A 32-px, 32-token, unrolled run initialises a 48-px, 24-token, scanned model:
    the position grid resampled, the text positions cut, every other param equal."""
    from clipjax.checkpoint import read_params
    from clipjax.interop.resize import resample_grid

    apply_overrides(tiny_config, ["train.steps=3"])
    source = unrolled_params(train(tiny_config, tmp_path / "source").params)
    config = load_config("configs/default.py:tiny")
    apply_overrides(
        config,
        [
            f"init_from='{tmp_path / 'source'}'",
            "model.image.image_size=48",
            "data.image_size=48",
            "model.text.context_length=24",
            "tokenizer.context_length=24",
            "model.scan_layers=True",
        ],
    )
    loaded = _initial(config)
    assert set(loaded) == set(source)
    np.testing.assert_allclose(
        loaded["image/pos_embed"], resample_grid(source["image/pos_embed"], 4, 6, 0), atol=1e-6
    )
    np.testing.assert_array_equal(loaded["text/pos_embed"], source["text/pos_embed"][:24])
    for name in set(source) - {"image/pos_embed", "text/pos_embed"}:
        np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
    assert read_params(tmp_path / "source")[1] == 3


def test_an_hf_tower_initialises_a_model_at_another_resolution(hf_dir, digits_cache):
    from clipjax.interop.resize import resample_grid

    path, exported = hf_dir
    config = lit_config(path, digits_cache, ["model.image.image_size=48", "data.image_size=48"])
    loaded = _initial(config)
    grid = exported["image/pos_embed"]
    old = int(np.sqrt(grid.shape[0] - 1))
    new = 48 // config.model.image.patch_size
    np.testing.assert_allclose(
        loaded["image/pos_embed"], resample_grid(grid, old, new, prefix_tokens=1), atol=1e-6
    )
    assert loaded["image/pos_embed"].shape[0] == 1 + new * new != grid.shape[0]
