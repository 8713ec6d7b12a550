"""FLIP's text masking (`model.text.token_dropout`): a training caption keeps a subset of
its positions (padding dropped first, the pooled token always), evals keep all."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clipjax.config import ConfigError, load_config
from clipjax.flops import text_tower_flops
from clipjax.models.text import TextTransformer, kept_token_indices, kept_tokens
from clipjax.validation import validate

EOT = 300  # the largest id: CLIP's argmax pooling finds it


def tower(dropout: float) -> TextTransformer:
    text = load_config("configs/default.py:tiny").model.text
    text.token_dropout = dropout
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    with nnx.use_eager_sharding(False):
        return TextTransformer(text, 16, scan=False, remat="none", **kw)


def captions(real: int, batch: int = 4, length: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = np.zeros((batch, length), np.int32)
    tokens[:, :real] = rng.integers(1, 250, size=(batch, real))
    tokens[:, real] = EOT
    return tokens


KEYS = jax.random.split(jax.random.key(5), 4)


def test_eval_keeps_every_token():
    tokens = jnp.asarray(captions(6))
    np.testing.assert_array_equal(tower(0.5)(tokens), tower(0.0)(tokens))


def test_padding_is_dropped_first_so_a_short_caption_is_unchanged():
    """6 words + the end token of 32 positions, half dropped: only padding after the
    end token goes, which a causal tower pooled at the end token never sees."""
    tokens = jnp.asarray(captions(6))
    model = tower(0.5)
    np.testing.assert_allclose(model(tokens, KEYS), model(tokens), rtol=1e-5, atol=1e-6)


def test_a_long_caption_keeps_its_end_token_and_a_random_subset_of_words():
    tokens = jnp.asarray(captions(29))  # 29 words + end + 2 pads; 16 kept
    model = tower(0.5)
    pooled = jnp.argmax(tokens, axis=-1)
    kept = np.asarray(kept_token_indices(KEYS, tokens, pooled, 0, kept_tokens(32, 0.5)))
    assert kept.shape == (4, 16) and (kept == 29).any(axis=1).all()  # the end token
    assert not np.isin(kept, [30, 31]).any()  # padding went first
    assert len({tuple(row) for row in kept}) == 4  # each caption its own subset
    masked = model(tokens, KEYS)
    assert np.abs(np.asarray(masked - model(tokens))).max() > 1e-3
    dropped = next(i for i in range(29) if i not in kept[0])
    changed = tokens.at[0, dropped].set(7 if tokens[0, dropped] != 7 else 8)
    np.testing.assert_allclose(model(changed, KEYS), masked, rtol=1e-6, atol=1e-6)
    changed = tokens.at[0, kept[0][0]].set(7 if tokens[0, kept[0][0]] != 7 else 8)
    assert np.abs(np.asarray(model(changed, KEYS) - masked)[0]).max() > 1e-4


def test_the_kept_tokens_are_counted():
    text = load_config("configs/default.py:tiny").model.text
    full = text_tower_flops(text, 16, train=True)
    text.token_dropout = 0.5
    assert text_tower_flops(text, 16) == full
    assert text_tower_flops(text, 16, train=True) < 0.55 * full


def test_token_dropout_of_one_is_refused():
    config = load_config("configs/default.py:tiny")
    config.model.text.token_dropout = 1.0
    with pytest.raises(ConfigError, match=r"model\.text\.token_dropout=1\.0 must be in"):
        validate(config, 8)
