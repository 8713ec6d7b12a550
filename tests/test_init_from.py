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
