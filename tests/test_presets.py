"""Published CLIP sizes have OpenAI's parameter counts, counted without allocating them."""

import math

import jax
import pytest
from flax import nnx

from clipjax.config import load_config
from clipjax.models import build_model
from clipjax.validation import validate

OPENAI_PARAMETERS = {  # sum of tensor sizes in OpenAI's released state dicts
    "vit_b32": 151_277_313,
    "vit_b16": 149_620_737,
    "vit_l14": 427_616_513,
}


@pytest.mark.parametrize("name", sorted(OPENAI_PARAMETERS))
def test_parameter_count_matches_openai(name):
    config = load_config(f"configs/clip/{name}.py")
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_model(config.model, nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)  # nothing allocated
    assert sum(math.prod(leaf.shape) for leaf in leaves) == OPENAI_PARAMETERS[name]


def test_published_config_needs_shards_and_validates_with_them():
    config = load_config("configs/clip/vit_b16.py")
    with pytest.raises(ValueError, match=r"needs data\.train_shards"):
        validate(config, num_devices=8)
    config.data.train_shards = "/data/{00000..00009}.tar"
    config.train.batch_size = 64
    with pytest.raises(ValueError, match=r"batch_size=64 is not divisible by data\.streams=1024"):
        validate(config, num_devices=8)  # the recipe's streams, for its pod batch
    config.data.streams = 8
    with pytest.raises(ValueError, match=r"needs evals\.imagenet\.dataset_dir"):
        validate(config, num_devices=8)  # the recipe's zero-shot ImageNet eval
    config.evals.imagenet.dataset_dir = "/data/imagenet"
    validate(config, num_devices=8)
