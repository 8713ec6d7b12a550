"""CoCa: captioning loss, CLS masking, causality, scan/remat, generation, training."""

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from clipjax.config import apply_overrides, load_config
from clipjax.data.decode import ImageTransform
from clipjax.data.pixels import pixel_normalizer
from clipjax.data.tokenizers import ByteTokenizer
from clipjax.data.writer import DIGIT_WORDS, build_digits_shards
from clipjax.evaluate.sources.clip_benchmark import load_clip_benchmark
from clipjax.losses.caption import caption_loss
from clipjax.models import build_model
from clipjax.models.coca import CoCa
from clipjax.models.generate import (
    BEAM_STATIC,
    GREEDY_STATIC,
    beam_captions,
    greedy_captions,
    score_captions,
)
from clipjax.train.loop import train

SOT, EOT = ByteTokenizer.SOT, ByteTokenizer.EOT
greedy = nnx.jit(greedy_captions, static_argnames=GREEDY_STATIC)
beam = nnx.jit(beam_captions, static_argnames=BEAM_STATIC)
score = nnx.jit(score_captions, static_argnames=("pad_id",))


def coca_config(*overrides: str):
    config = load_config("configs/coca/base.py:tiny")
    apply_overrides(config, overrides)
    return config


def build(*overrides: str, seed: int = 0) -> CoCa:
    with nnx.use_eager_sharding(False):
        return build_model(coca_config(*overrides).model, nnx.Rngs(seed))


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype(np.float32)


CAPTIONS = ["a four", "the digit seven.", "handwritten 3", "x"]


# -- (a) caption loss ----------------------------------------------------------


def numpy_caption_loss(logits, targets, pad_id):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    terms = [
        -log_probs[b, t, targets[b, t]]
        for b in range(targets.shape[0])
        for t in range(targets.shape[1])
        if targets[b, t] != pad_id
    ]
    return np.mean(terms), len(terms)


@pytest.mark.parametrize("pad_id", [0, 3])
def test_caption_loss_is_cross_entropy_over_non_pad_targets(pad_id):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(3, 6, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 6))
    targets[0, 3:] = pad_id
    targets[2, :] = pad_id
    expected, count = numpy_caption_loss(logits, targets, pad_id)
    loss, got_count = caption_loss(jnp.asarray(logits), jnp.asarray(targets), pad_id)
    assert loss.dtype == jnp.float32
    assert int(got_count) == count == int((targets != pad_id).sum())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_caption_loss_of_only_padding_is_zero_and_shape_mismatch_raises():
    loss, count = caption_loss(jnp.ones((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), 0)
    assert float(loss) == 0.0 and int(count) == 0
    with pytest.raises(ValueError, match="do not match"):
        caption_loss(jnp.ones((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), 0)


# -- (b) shapes, norms, one-pass teacher forcing -----------------------------------


def test_train_outputs_shapes_norms_and_teacher_forced_loss():
    model = build()
    images = random_images(4)
    tokens = jnp.asarray(ByteTokenizer(32)(CAPTIONS))
    out = nnx.jit(lambda m, b: m.train_outputs(b))(model, {"image": images, "text": tokens})
    for name in ("image", "text"):
        emb = out["embeddings"][name]
        assert emb.shape == (4, 64) and emb.dtype == jnp.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    image, text, logits = nnx.jit(
        lambda m: (
            m.encode_image(images),
            m.encode_text(tokens),
            m.caption_logits(m.decoder_context(images), tokens[:, :-1]),
        )
    )(model)
    np.testing.assert_allclose(out["embeddings"]["image"], image, atol=1e-6)
    np.testing.assert_allclose(out["embeddings"]["text"], text, atol=1e-6)
    # The one-pass loss equals decoding tokens[:, :-1] explicitly against tokens[:, 1:].
    assert logits.shape == (4, 31, 320) and logits.dtype == jnp.float32
    expected, _ = numpy_caption_loss(np.asarray(logits), np.asarray(tokens[:, 1:]), 0)
    assert out["caption_loss"].shape == () and out["caption_loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(out["caption_loss"]), expected, rtol=1e-5)
    assert abs(expected - np.log(320)) < 1.0  # an untrained decoder is near uniform


def test_parameters_have_the_expected_structure():
    model = build()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert "proj" not in params["image"]  # CoCa's poolers replace the ViT's projection
    assert params["caption_pool"]["queries"].shape == (16, 64)
    assert params["contrastive_pool"]["queries"].shape == (1, 64)
    assert params["vocab_proj"]["kernel"].shape == (64, 320)
    assert params["logit_scale"].shape == ()
    np.testing.assert_allclose(params["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
    assert "logit_bias" not in params
    biased = build("model.logit_bias_init=-10.0")
    assert float(biased.logit_bias[...]) == -10.0


# -- (c) the CLS sees the real tokens only ------------------------------------------


def test_cls_embedding_ignores_padding_and_sees_real_tokens():
    model = build()
    tokens = jnp.asarray(ByteTokenizer(32)(CAPTIONS))
    full = model.encode_text(tokens)
    # Less padding after EOT: the same embedding (the CLS has no position embedding).
    np.testing.assert_allclose(model.encode_text(tokens[:, :20]), full, atol=1e-6)
    # Whatever the padding embeds to, the CLS never attends to it.
    table = model.text.token_embed.embedding
    original = table[...]
    table[...] = original.at[0].add(5.0)
    np.testing.assert_allclose(model.encode_text(tokens), full, atol=1e-6)
    table[...] = original
    # A real token changes it: "a four" -> "a fous".
    changed = tokens.at[0, 6].set(ord("s") + 1)
    moved = np.abs(np.asarray(model.encode_text(changed) - full)).max(-1)
    assert moved[0] > 1e-3 and moved[1:].max() < 1e-6


# -- (d) causality ---------------------------------------------------------------------


def test_caption_logits_are_causal():
    model = build()
    context = model.decoder_context(random_images(2))
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 259, (2, 16)))
    changed = tokens.at[:, 9].set((tokens[:, 9] % 250) + 3)
    before = model.caption_logits(context, tokens)
    after = model.caption_logits(context, changed)
    np.testing.assert_allclose(after[:, :9], before[:, :9], atol=1e-6)
    assert np.abs(np.asarray(after[:, 9:] - before[:, 9:])).max(-1).min() > 1e-4


# -- scan and remat ----------------------------------------------------------------------


def stack_blocks(unrolled, scanned):
    """The unrolled parameters in the scanned layout: every `blocks` list stacked."""
    if not isinstance(unrolled, dict):
        return unrolled
    out = {}
    for key, value in unrolled.items():
        if key == "blocks" and all(isinstance(i, int) for i in value):
            layers = [value[i] for i in sorted(value)]
            out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        else:
            out[key] = stack_blocks(value, scanned[key])
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), out, scanned)
    return out


@pytest.mark.slow  # layers.stack_blocks is shared with the towers, scanned by default tests
@pytest.mark.parametrize("remat", ["full"])
def test_scanned_coca_matches_unrolled_loss_and_gradients(remat):
    depths = ["model.coca.unimodal_depth=2", "model.coca.multimodal_depth=2"]
    plain = build(*depths)
    scanned = build(*depths, "model.scan_layers=True", f"model.remat={remat}")
    graph_p, params_p = nnx.split(plain)
    graph_s, params_s = nnx.split(scanned)
    params_p, params_s = nnx.to_pure_dict(params_p), nnx.to_pure_dict(params_s)
    batch = {"image": random_images(3), "text": jnp.asarray(ByteTokenizer(32)(CAPTIONS[:3]))}

    def loss(graph, params):
        out = nnx.merge(graph, params).train_outputs(batch)
        image, text = out["embeddings"]["image"], out["embeddings"]["text"]
        return out["caption_loss"] + jnp.sum(image @ text.T * jnp.arange(3.0))

    value_p, grads_p = jax.jit(jax.value_and_grad(lambda p: loss(graph_p, p)))(params_p)
    value_s, grads_s = jax.jit(jax.value_and_grad(lambda p: loss(graph_s, p)))(
        stack_blocks(params_p, params_s)
    )
    np.testing.assert_allclose(value_s, value_p, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads_s,
        stack_blocks(grads_p, grads_s),
    )


# -- (e) generation ----------------------------------------------------------------------


def after_eot_is_pad(seqs: np.ndarray) -> bool:
    for row in seqs:
        ends = np.flatnonzero(row == EOT)
        if len(ends) and row[ends[0] + 1 :].any():
            return False
    return True


def test_greedy_is_argmax_and_one_beam_is_greedy():
    model = build()
    images = random_images(3)
    seqs = np.asarray(greedy(model, images, sot_id=SOT, eot_id=EOT, max_len=10))
    assert seqs.shape == (3, 10) and seqs.dtype == np.int32
    assert (seqs[:, 0] == SOT).all() and after_eot_is_pad(seqs)
    # Each generated token is the argmax (padding excluded) given the prefix before it.
    logits = np.asarray(model.caption_logits(model.decoder_context(images), seqs))
    for b, t in itertools.product(range(3), range(1, 10)):
        if seqs[b, t] == 0:
            break
        step = logits[b, t - 1].copy()
        step[0] = -np.inf
        assert seqs[b, t] == step.argmax()
    one = np.asarray(beam(model, images, sot_id=SOT, eot_id=EOT, max_len=10, beams=1))
    np.testing.assert_array_equal(one, seqs)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_cached_decoding_equals_decoding_without_the_cache(scan):
    """A cached step's output equals the full decoder's at that position; greedy and
    beam search pick the same tokens with and without the cache."""
    from clipjax.models.decode_cache import init_cache, step

    model = build(f"model.scan_layers={scan}", "model.coca.multimodal_depth=2", seed=1)
    images = random_images(3, seed=4)
    kw = dict(sot_id=SOT, eot_id=EOT, max_len=12)
    uncached = np.asarray(greedy(model, images, cache=False, **kw))
    np.testing.assert_array_equal(np.asarray(greedy(model, images, **kw)), uncached)
    context = model.decoder_context(images)
    full = np.asarray(model.caption_hidden(context, uncached))
    kv = init_cache(model, context, 12)
    for t in range(11):
        hidden, kv = step(model, kv, jnp.asarray(uncached[:, t]), jnp.int32(t))
        np.testing.assert_allclose(np.asarray(hidden), full[:, t], atol=1e-5, err_msg=str(t))
    for beams in (1, 3):
        with_cache = np.asarray(beam(model, images, beams=beams, **kw))
        without = np.asarray(beam(model, images, beams=beams, cache=False, **kw))
        np.testing.assert_array_equal(with_cache, without, err_msg=f"beams={beams}")
    assert (uncached[:, 1] != 0).all()  # something was generated


def all_captions(vocab: int, sot: int, eot: int, max_len: int) -> np.ndarray:
    """Every sequence generation can produce: SOT, then non-pad tokens until EOT, pad after."""
    found = set()
    for body in itertools.product(range(1, vocab), repeat=max_len - 1):
        body = list(body)
        if eot in body:
            end = body.index(eot) + 1
            body = body[:end] + [0] * (max_len - 1 - end)
        found.add((sot, *body))
    return np.asarray(sorted(found), np.int32)


def test_beam_search_is_exact_when_the_beam_holds_every_prefix():
    """Vocabulary {pad, 1, 2, 3, SOT=4, EOT=5}, 3 generated tokens: 25 beams keep every
    prefix, so beam search must find the best of all 85 possible captions."""
    sot, eot, max_len = 4, 5, 4
    model = build("model.text.vocab_size=6", seed=3)
    kernel = model.vocab_proj.kernel
    kernel[...] = kernel[...] * 6.0  # peaked next-token distributions
    images = random_images(4, seed=2)
    candidates = all_captions(6, sot, eot, max_len)
    assert len(candidates) == 85
    every = np.tile(candidates, (4, 1))
    scores = np.asarray(score(model, np.repeat(images, 85, axis=0), every)).reshape(4, 85)
    best = scores.max(1)
    kw = dict(sot_id=sot, eot_id=eot, max_len=max_len)
    exhaustive = np.asarray(beam(model, images, beams=25, **kw))
    np.testing.assert_allclose(score(model, images, exhaustive), best, rtol=1e-5)
    greedy_seqs = np.asarray(greedy(model, images, **kw))
    greedy_scores = np.asarray(score(model, images, greedy_seqs))
    assert (greedy_scores <= best + 1e-5).all()
    narrow = np.asarray(beam(model, images, beams=3, **kw))
    assert after_eot_is_pad(narrow) and (narrow[:, 0] == sot).all()
    assert (np.asarray(score(model, images, narrow)) <= best + 1e-5).all()
    print("best", best, "greedy", greedy_scores)


def test_length_penalty_and_bad_arguments():
    model = build()
    images = random_images(2)
    kw = dict(sot_id=SOT, eot_id=EOT, max_len=8)
    seqs = np.asarray(beam(model, images, beams=3, length_penalty=1.0, **kw))
    assert seqs.shape == (2, 8) and after_eot_is_pad(seqs)
    with pytest.raises(ValueError, match="max_len=40"):
        greedy_captions(model, images, sot_id=SOT, eot_id=EOT, max_len=40)
    with pytest.raises(ValueError, match="beams=0"):
        beam_captions(model, images, beams=0, **kw)


# -- (f) training on the digits -----------------------------------------------------------


def digits_named(text: str) -> set[int]:
    """Digits a caption names as a word or numeral (the template "one more ..." aside)."""
    text = text.replace("one more", "")
    return {d for d, word in enumerate(DIGIT_WORDS) if re.search(rf"\b({word}|{d})\b", text)}


def decode(row: np.ndarray) -> str:
    return bytes(int(t) - 1 for t in row if 1 <= t <= 256).decode("utf-8", "replace")


def coca_run_config(cache, steps: int, batch: int, *overrides: str):
    config = coca_config(
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.log_every={max(steps // 6, 1)}",
        f"optim.warmup_steps={max(steps // 20, 1)}",
        "checkpoint.async_save=False",
        *overrides,
    )
    config.data.cache_dir = str(cache)
    return config


def logged(workdir, key: str) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


@pytest.mark.slow  # CI runs it when time allows: the default suite stays ~15 min
def test_short_coca_run_on_a_sharded_mesh_lowers_the_loss(tmp_path, digits_cache):
    config = coca_run_config(digits_cache, 30, 32, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    result = train(config, tmp_path)
    caption = logged(tmp_path, "train/caption_loss")
    total = logged(tmp_path, "train/loss")
    print("caption loss", caption, "total loss", total)
    assert caption[-1] < 0.6 * caption[0]  # from ~log(320) at init: it learns the templates
    assert total[-1] < total[0] - 2.0  # the contrastive part needs longer (the slow test)
    assert 0.0 <= result.final_metrics["zeroshot/digits/top1"] <= 1.0


@pytest.mark.slow
def test_trained_coca_captions_held_out_digits(tmp_path, digits_cache):
    config = coca_run_config(digits_cache, 300, 128, "optim.lr=0.003")
    result = train(config, tmp_path, devices=jax.devices()[:1])
    with nnx.use_eager_sharding(False):
        model = build_model(config.model, nnx.Rngs(0))
    nnx.update(model, jax.device_get(result.params))

    root = build_digits_shards(digits_cache).zeroshot_dir
    held_out = load_clip_benchmark(
        root, "digits", ImageTransform(32, (0.5,) * 3, (0.5,) * 3, False)
    )
    images = pixel_normalizer((0.5,) * 3, (0.5,) * 3)(jnp.asarray(held_out.images))
    kw = dict(sot_id=SOT, eot_id=EOT, max_len=32)
    greedy_seqs = np.asarray(greedy(model, images, **kw))
    beam_seqs = np.asarray(beam(model, images, beams=4, **kw))
    np.testing.assert_array_equal(np.asarray(beam(model, images, beams=1, **kw)), greedy_seqs)

    def accuracy(seqs):
        return np.mean(
            [digits_named(decode(s)) == {y} for s, y in zip(seqs, held_out.labels, strict=True)]
        )

    greedy_acc, beam_acc = accuracy(greedy_seqs), accuracy(beam_seqs)
    greedy_lp = np.asarray(score(model, images, greedy_seqs))
    beam_lp = np.asarray(score(model, images, beam_seqs))
    print(
        f"held-out digits ({len(images)}): greedy caption accuracy {greedy_acc:.3f}, "
        f"beam {beam_acc:.3f}; zero-shot {result.final_metrics['zeroshot/digits/top1']:.3f}; "
        f"mean log-prob greedy {greedy_lp.mean():.3f} beam {beam_lp.mean():.3f}; "
        f"e.g. {[decode(s) for s in greedy_seqs[:4]]}"
    )
    assert greedy_acc >= 0.5 and beam_acc >= 0.5  # chance: 0.1
    assert (beam_lp >= greedy_lp - 1e-4).all()
