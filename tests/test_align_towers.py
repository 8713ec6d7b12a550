"""ALIGN's towers: EfficientNet image tower and bidirectional, cls-pooled text tower."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from clipjax.config import load_config
from clipjax.data.tokenizers import ByteTokenizer
from clipjax.models.convnet import EfficientNet
from clipjax.models.spec import model_spec
from clipjax.models.text import TextTransformer, end_positions
from clipjax.models.two_tower import TwoTower
from clipjax.parallel import build_mesh, param_shardings, rules_table
from clipjax.validation import config_problems

# EfficientNet-B0's repeats per stage (Tan & Le, 2019, table 1), written out here
# independently of clipjax.models.convnet.
B0_REPEATS = (1, 2, 2, 3, 3, 4, 1)
# tf.keras.applications.EfficientNetB0(include_top=False): trainable parameters (BatchNorm's
# scale and bias only; its running statistics and the input Normalization are not learned).
KERAS_B0_TRAINABLE = 4_007_548
F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)


def image_cfg(width=0.25, depth=0.2) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            kind="efficientnet",
            width_coefficient=width,
            depth_coefficient=depth,
            se_ratio=0.25,
            act="swish",
        )
    )


def text_cfg(causal=False, pool="cls") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            vocab_size=320,
            context_length=16,
            width=32,
            depth=2,
            heads=4,
            mlp_ratio=2.0,
            act="gelu",
            pool=pool,
            pad_id=0,
            eos_id=-1,
            causal=causal,
        )
    )


def align_config() -> ml_collections.ConfigDict:
    """The default tiny config with ALIGN's towers."""
    config = load_config("configs/default.py:tiny")
    with config.unlocked():
        config.model.embed_dim = 16
        config.model.image = image_cfg()
        config.model.text = text_cfg()
        config.tokenizer.context_length = 16
    return config


def abstract_efficientnet(width, depth, embed_dim=16) -> EfficientNet:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(
            lambda: EfficientNet(
                image_cfg(width, depth),
                embed_dim,
                scan=False,
                remat="none",
                rngs=nnx.Rngs(0),
                **F32,
            )
        )


def param_count(module: nnx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def build(cls, cfg, embed_dim=16, seed=0):
    with nnx.use_eager_sharding(False):
        return cls(cfg, embed_dim, scan=False, remat="none", rngs=nnx.Rngs(seed), **F32)


# --- text tower ---------------------------------------------------------------------------


def byte_tokens(texts, length):
    return jnp.asarray(ByteTokenizer(length)(texts))


def test_bidirectional_cls_pool_ignores_padding():
    tower = build(TextTransformer, text_cfg())
    short = byte_tokens(["a cat", "two dogs"], 12)
    long = byte_tokens(["a cat", "two dogs"], 16)  # same text, 4 more pads
    assert (long[:, :12] == short).all() and (long[:, 12:] == 0).all()
    reference = tower(short)
    np.testing.assert_allclose(tower(long), reference, atol=1e-5)

    # Padding's own embeddings (token 0's row, the positions past the text) do not matter.
    tower.token_embed.embedding[...] = tower.token_embed.embedding[...].at[0].add(3.0)
    tower.pos_embed[...] = tower.pos_embed[...].at[12:].add(3.0)
    np.testing.assert_allclose(tower(long), reference, atol=1e-5)

    # ... but every real token does, including ones after position 0 (not causal).
    changed = long.at[0, 3].set(long[0, 3] + 1)
    moved = np.abs(np.asarray(tower(changed) - reference)).max(axis=-1)
    assert moved[0] > 1e-3 and moved[1] < 1e-5


def test_causal_default_pools_at_the_end_token():
    cfg = text_cfg(pool="argmax")
    del cfg["causal"]
    tower = build(TextTransformer, cfg)
    assert tower.causal is True
    tokens = byte_tokens(["a cat", "two dogs"], 16)
    assert end_positions(tokens, "argmax").tolist() == [6, 9]  # SOT, bytes, EOT
    assert tokens[0, 6] == tokens[1, 9] == ByteTokenizer.EOT


def test_cls_pool_needs_a_bidirectional_encoder():
    with pytest.raises(ValueError, match="causal=False"):
        build(TextTransformer, text_cfg(causal=True, pool="cls"))


# --- EfficientNet ---------------------------------------------------------------------


def test_efficientnet_b0_backbone_has_keras_parameter_count():
    model = abstract_efficientnet(1.0, 1.0, embed_dim=640)
    backbone = param_count(model) - model.proj.kernel.size
    assert abs(backbone - KERAS_B0_TRAINABLE) <= 0.03 * KERAS_B0_TRAINABLE
    assert backbone == KERAS_B0_TRAINABLE  # same blocks, GroupNorm's 2 params per channel


@pytest.mark.parametrize("depth", [1.0, 1.2, 0.2])
def test_depth_coefficient_scales_blocks_by_ceil(depth):
    expected = sum(math.ceil(depth * r) for r in B0_REPEATS)
    assert len(abstract_efficientnet(0.25, depth).blocks) == expected
    assert {1.0: 16, 1.2: 23, 0.2: 7}[depth] == expected


def test_width_coefficient_rounds_channels_to_multiples_of_8():
    b2 = abstract_efficientnet(1.1, 1.2)  # EfficientNet-B2: stem 32, last stage 352, head 1408
    assert b2.stem.kernel.shape == (3, 3, 3, 32)
    assert b2.blocks[-1].project.kernel.shape[-1] == 352
    assert b2.head.kernel.shape[-1] == 1408
    tiny = abstract_efficientnet(0.25, 0.2)  # 40 * 0.25 = 10 rounds up to 16, not down to 8
    assert [b.project.kernel.shape[-1] for b in tiny.blocks] == [8, 8, 16, 24, 32, 48, 80]


def two_tower(model_cfg) -> TwoTower:
    with nnx.use_eager_sharding(False):
        return TwoTower(model_cfg, rngs=nnx.Rngs(0))


def test_efficientnet_two_tower_embeddings():
    model = two_tower(align_config().model)
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    raw, embedded = nnx.jit(lambda m, x: (m.image(x), m.encode_image(x)))(model, images)
    assert raw.shape == (3, 16)
    np.testing.assert_allclose(jnp.linalg.norm(embedded, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embedded, raw / jnp.linalg.norm(raw, axis=-1, keepdims=True))
    assert float(jnp.abs(embedded[0] - embedded[1]).max()) > 1e-3  # depends on the image


@pytest.mark.slow  # the block remat is shared with the ViT and tested there by default
def test_remat_gives_the_same_image_gradients():
    def grads(remat):
        with nnx.use_eager_sharding(False):
            tower = EfficientNet(image_cfg(), 16, scan=False, remat=remat, rngs=nnx.Rngs(0), **F32)
        graphdef, params = nnx.split(tower, nnx.Param)
        images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

        def loss(p):
            return jnp.sum(nnx.merge(graphdef, p)(images) ** 2)

        return jax.jit(jax.grad(loss))(params)

    # Relative to each leaf's largest entry: recomputation may fuse ops differently.
    errors = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(b).max()), grads("full"), grads("none")
    )
    assert max(jax.tree.leaves(errors)) < 1e-4


def clip_loss(model: TwoTower, batch) -> jax.Array:
    out = model.train_outputs(batch)["embeddings"]
    logits = jnp.exp(model.logit_scale[...]) * out["image"] @ out["text"].T
    labels = jnp.arange(logits.shape[0])
    per_image = -jax.nn.log_softmax(logits, axis=1)[labels, labels]
    per_text = -jax.nn.log_softmax(logits, axis=0)[labels, labels]
    return (per_image.mean() + per_text.mean()) / 2


def test_gradients_reach_every_parameter():
    model = two_tower(align_config().model)
    graphdef, params = nnx.split(model, nnx.Param)
    batch = {
        "image": jax.random.normal(jax.random.key(1), (4, 32, 32, 3)),
        "text": byte_tokens(["a cat", "a dog", "two birds", "one fish"], 16),
    }

    def loss(p):
        return clip_loss(nnx.merge(graphdef, p), batch)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grads = value_and_grad(params)
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads))
    dead = [jax.tree_util.keystr(k) for k, g in flat if not np.abs(np.asarray(g)).max() > 0]
    assert not dead, f"zero gradient for {dead}"
    assert len(flat) > 100

    # The gradient is the loss's derivative: a central difference along it agrees.
    direction = jax.tree.map(lambda g: g / optax_norm(grads), grads)
    eps = 1e-2

    def step(sign):
        return jax.tree.map(lambda p, d: p + sign * eps * d, params, direction)

    numeric = (value_and_grad(step(1))[0] - value_and_grad(step(-1))[0]) / (2 * eps)
    np.testing.assert_allclose(numeric, optax_norm(grads), rtol=2e-2)


def optax_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_shardings_on_fsdp4_tensor2_mesh():
    config = align_config()
    spec = model_spec(config.model)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: TwoTower(config.model, rngs=nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    mesh = build_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    shardings = param_shardings(
        spec.logical_specs, shapes, mesh, rules_table(config.sharding_rules)
    )
    image = shardings["image"]
    assert image["stem"]["kernel"].spec == P(None, None, None, "fsdp")
    expand = image["blocks"][1]["expand"]["kernel"]
    assert expand.spec == P(None, None, "fsdp", "tensor")
    assert image["blocks"][1]["se"]["reduce"]["kernel"].spec == P("tensor", None)
    assert image["proj"]["kernel"].spec == P("fsdp", None)
    leaves = zip(jax.tree.leaves(shardings), jax.tree.leaves(shapes), strict=True)
    split = [math.prod(x.shape) // math.prod(s.shard_shape(x.shape)) for s, x in leaves]
    conv_leaves = len(jax.tree.leaves(shapes["image"]))
    assert sum(n == 8 for n in split) > conv_leaves // 4  # fsdp x tensor on kernels


def test_config_checks_accept_align_towers():
    config = align_config()
    assert config_problems(config, num_devices=8, num_processes=1) == []
    with config.unlocked():
        config.model.text.causal = True
        config.model.image.se_ratio = 1.5
    problems = config_problems(config, num_devices=8, num_processes=1)
    assert any("pool='cls' needs model.text.causal=False" in p for p in problems)
    assert any("se_ratio=1.5" in p for p in problems)
    with config.unlocked():
        config.model.image.kind = "resnet"
    problems = config_problems(config, num_devices=8, num_processes=1)
    assert any("model.image.kind='resnet'" in p for p in problems)


def test_unknown_image_kind_is_rejected():
    config = align_config()
    with config.unlocked():
        config.model.image.kind = "resnet"
    with pytest.raises(ValueError, match="'vit', 'efficientnet'"):
        two_tower(config.model)
