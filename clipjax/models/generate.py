"""Caption generation for CoCa: greedy and beam search, jit-able.

Both run a `lax.while_loop` over a fixed `[.., max_len]` token buffer that starts
`[SOT, pad, ...]` and fill position t from the logits after position t-1. With
`cache=True` (default) a step runs the decoder on one new token against key/value
caches (`models.decode_cache`: O(L) per token); with `cache=False` it re-runs the
decoder on the whole buffer (O(L^2) per token), the reference the cache is tested
against. The loop stops early once every sequence has
produced `eot_id`; positions after a sequence's EOT hold `pad_id`. The padding
token is never generated (it is never a training target).

Scores are the model's own log-probabilities (log-softmax over the whole
vocabulary, not renormalised after excluding padding), so a beam's score equals
`score_captions` of its tokens.

The model needs `decoder_context(images)`, `caption_hidden(context, tokens)`,
`vocab_logits(hidden)` and a `context_length` attribute (see models.coca.CoCa).
Jit with `nnx.jit(greedy_captions, static_argnames=GREEDY_STATIC)` (`BEAM_STATIC`
for `beam_captions`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.decode_cache import init_cache, reorder, step

GREEDY_STATIC = ("sot_id", "eot_id", "max_len", "pad_id", "cache")
BEAM_STATIC = (*GREEDY_STATIC, "beams", "length_penalty")


def _check_length(model: nnx.Module, max_len: int) -> None:
    if not 2 <= max_len <= model.context_length:
        raise ValueError(
            f"max_len={max_len}; expected 2 <= max_len <= the model's context_length "
            f"{model.context_length}"
        )


def _next_log_probs(model, context: jax.Array, tokens: jax.Array, t: jax.Array) -> jax.Array:
    """float32 `[N, vocab]` log-probabilities of the token at position t."""
    hidden = model.caption_hidden(context, tokens)
    hidden = jax.lax.dynamic_index_in_dim(hidden, t - 1, axis=1, keepdims=False)
    return jax.nn.log_softmax(model.vocab_logits(hidden), axis=-1)


def _start(rows: tuple[int, ...], max_len: int, sot_id: int, pad_id: int) -> jax.Array:
    return jnp.full((*rows, max_len), pad_id, jnp.int32).at[..., 0].set(sot_id)


def _decoder(model, context: jax.Array, max_len: int, cache: bool):
    """(initial carry, `next(seqs, t, carry) -> (log-probs of token t, carry)`).

    The carry holds the model's state (and the caches): a `lax.while_loop` body may
    not use modules holding the enclosing trace's arrays (scanned layers extract
    them), so the model is merged inside the body from its carried state."""
    graphdef, state = nnx.split(model)
    kv = init_cache(model, context, max_len) if cache else None

    def next_log_probs(seqs, t, carry):
        state, kv = carry
        inner = nnx.merge(graphdef, state)
        if kv is None:
            return _next_log_probs(inner, context, seqs, t), carry
        previous = jax.lax.dynamic_index_in_dim(seqs, t - 1, axis=1, keepdims=False)
        hidden, kv = step(inner, kv, previous, t - 1)
        return jax.nn.log_softmax(inner.vocab_logits(hidden), axis=-1), (state, kv)

    return (state, kv), next_log_probs


def greedy_captions(
    model: nnx.Module,
    images: jax.Array,
    *,
    sot_id: int,
    eot_id: int,
    max_len: int,
    pad_id: int = 0,
    cache: bool = True,
) -> jax.Array:
    """int32 `[B, max_len]`: SOT, then the most likely next token each step, until EOT."""
    _check_length(model, max_len)
    context = model.decoder_context(images)
    batch = images.shape[0]
    carry, next_log_probs = _decoder(model, context, max_len, cache)

    def body(state):
        t, seqs, done, carry = state
        log_probs, carry = next_log_probs(seqs, t, carry)
        log_probs = log_probs.at[:, pad_id].set(-jnp.inf)
        token = jnp.where(done, pad_id, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))
        seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, t, axis=1)
        return t + 1, seqs, done | (token == eot_id), carry

    def cond(state):
        t, _, done, _ = state
        return (t < max_len) & ~done.all()

    seqs = _start((batch,), max_len, sot_id, pad_id)
    start = (jnp.int32(1), seqs, jnp.zeros(batch, bool), carry)
    return jax.lax.while_loop(cond, body, start)[1]


def beam_captions(
    model: nnx.Module,
    images: jax.Array,
    *,
    sot_id: int,
    eot_id: int,
    max_len: int,
    beams: int = 4,
    length_penalty: float = 0.0,
    pad_id: int = 0,
    cache: bool = True,
) -> jax.Array:
    """int32 `[B, max_len]`: the best of `beams` hypotheses kept by total log-probability.

    Finished hypotheses stay in their beam slot, extended by padding at no cost, and
    compete with the open ones on their sum of log-probabilities. At the end the
    best slot is chosen by `sum_log_prob / length**length_penalty` (length: tokens
    after SOT, EOT included); 0 ranks by total log-probability, > 0 favours longer
    captions. `beams=1` is greedy decoding.
    """
    _check_length(model, max_len)
    if beams < 1:
        raise ValueError(f"beams={beams}; expected at least 1")
    context = jnp.repeat(model.decoder_context(images), beams, axis=0)
    batch = images.shape[0]
    carry, next_log_probs = _decoder(model, context, max_len, cache)
    first_row = (jnp.arange(batch) * beams)[:, None]

    def body(state):
        t, seqs, scores, done, carry = state
        flat = seqs.reshape(batch * beams, max_len)
        log_probs, carry = next_log_probs(flat, t, carry)
        log_probs = log_probs.at[:, pad_id].set(-jnp.inf)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, beams, vocab)
        pad_only = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)
        log_probs = jnp.where(done[..., None], pad_only, log_probs)
        totals = (scores[..., None] + log_probs).reshape(batch, beams * vocab)
        scores, index = jax.lax.top_k(totals, beams)
        parent, token = index // vocab, (index % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1)
        seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, t, axis=2)
        done = jnp.take_along_axis(done, parent, axis=1) | (token == eot_id)
        model_state, kv = carry
        if kv is not None:  # each surviving hypothesis continues its parent's cache
            carry = (model_state, reorder(kv, (first_row + parent).reshape(-1)))
        return t + 1, seqs, scores, done, carry

    def cond(state):
        t, _, _, done, _ = state
        return (t < max_len) & ~done.all()

    # Only the first slot is live at the start, so the first step fills the beam
    # with distinct tokens instead of `beams` copies of the same one.
    scores = jnp.full((batch, beams), -jnp.inf).at[:, 0].set(0.0)
    start = (
        jnp.int32(1),
        _start((batch, beams), max_len, sot_id, pad_id),
        scores,
        jnp.zeros((batch, beams), bool),
        carry,
    )
    _, seqs, scores, _, _ = jax.lax.while_loop(cond, body, start)
    if length_penalty:
        lengths = (seqs[..., 1:] != pad_id).sum(-1).astype(jnp.float32)
        scores = scores / jnp.maximum(lengths, 1.0) ** length_penalty
    best = jnp.argmax(scores, axis=1)
    return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]


def score_captions(
    model: nnx.Module, images: jax.Array, captions: jax.Array, *, pad_id: int = 0
) -> jax.Array:
    """float32 `[B]`: teacher-forced log-probability of each caption's tokens after its
    first (SOT) token, padding excluded."""
    context = model.decoder_context(images)
    log_probs = jax.nn.log_softmax(model.caption_logits(context, captions[:, :-1]), axis=-1)
    targets = captions[:, 1:]
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets != pad_id, picked, 0.0).sum(-1)
