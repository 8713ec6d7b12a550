"""The contrastive loss API: one call for every kind, strategy and geometry term.

Called on global, batch-sharded, L2-normalised embeddings inside the jitted
step; the work runs per device under `jax.shard_map` on the loss mesh (see
`strategies`). Kinds:
  softmax  symmetric InfoNCE (CLIP); with `label_smoothing` > 0, ALIGN's
           smoothed targets (1 - e on the positive, e / B spread over the batch)
  dcl      decoupled softmax: the positive is left out of the denominator
  sigmoid  SigLIP's pairwise sigmoid with a learned bias
  cwcl     CWCL's continuous targets from a frozen tower's similarities (`cwcl.py`)
With `grouped`, the loss is the mean over loss groups of each group's full loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from clipjax.losses.cwcl import WEIGHT_SOURCES, cwcl_local_sum
from clipjax.losses.geometry import alignment_sum, centroid_gap, local_uniformity, uniformity
from clipjax.losses.sigmoid import sigmoid_local_sum
from clipjax.losses.strategies import (
    GROUP,
    LOSS_AXES,
    MEMBER,
    STRATEGIES,
    PairScorer,
    group_size_for,
    loss_mesh,
    pmax_all,
    psum_all,
    varying,
)
from clipjax.parallel import axis_size, axis_tuple

KINDS = ("softmax", "dcl", "sigmoid", "cwcl")
__all__ = ["KINDS", "STRATEGIES", "LossSpec", "contrastive_loss"]


@dataclass(frozen=True)
class LossSpec:
    """What to compute; built from the config's `loss` group by `LossSpec.from_config`."""

    kind: str = "softmax"
    strategy: str = "gather"
    group_size: int = 1
    label_smoothing: float = 0.0
    alignment_weight: float = 0.0
    uniformity_weight: float = 0.0
    cross_uniformity_weight: float = 0.0
    ring_chunk: int = 1024  # columns scored at once by the ring: memory O(b * ring_chunk)
    cwcl_weights_from: str | None = None  # kind "cwcl": the frozen tower, "image" or "text"

    @classmethod
    def from_config(cls, cfg) -> LossSpec:
        return cls(**{name: cfg[name] for name in cls.__dataclass_fields__ if name in cfg})

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"loss.kind={self.kind!r} is not one of {KINDS}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"loss.strategy={self.strategy!r} is not one of {STRATEGIES}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.ring_chunk < 1:
            raise ValueError(f"loss.ring_chunk={self.ring_chunk} must be at least 1")
        if self.label_smoothing and self.kind != "softmax":
            raise ValueError(f"loss.label_smoothing applies to kind 'softmax', not {self.kind!r}")
        if (self.kind == "cwcl") != (self.cwcl_weights_from in WEIGHT_SOURCES):
            raise ValueError(
                f"loss.cwcl_weights_from={self.cwcl_weights_from!r} with loss.kind="
                f"{self.kind!r}: kind 'cwcl' needs one of {WEIGHT_SOURCES} (the frozen tower), "
                "other kinds leave it None"
            )


def contrastive_loss(
    image: jax.Array,
    text: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array | None = None,
    *,
    mesh: Mesh,
    batch_axes: str | Sequence[str] | None,
    spec: LossSpec = LossSpec(),
    metrics: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss of L2-normalised `[B, d]` embeddings, and metrics (when `metrics`).

    `log_scale` is the learned log inverse temperature; `bias` SigLIP's learned
    bias (required for `sigmoid`, unused otherwise).
    """
    spec.check()
    if spec.kind == "sigmoid" and bias is None:
        raise ValueError(
            "loss.kind='sigmoid' needs the model's learned bias (model.logit_bias_init)"
        )
    axes = axis_tuple(batch_axes)
    shards = axis_size(mesh, axes)
    group = group_size_for(spec.strategy, spec.group_size, shards)
    rows = P(LOSS_AXES, None)
    body = partial(
        _per_device,
        spec=spec,
        scorer=PairScorer(spec.strategy == "ring", group, spec.ring_chunk),
        batch=image.shape[0],
        groups=shards // group,
        with_metrics=metrics,
    )
    scale = jnp.exp(log_scale.astype(jnp.float32))
    bias = jnp.zeros((), jnp.float32) if bias is None else bias.astype(jnp.float32)
    return jax.shard_map(
        body,
        mesh=loss_mesh(mesh, axes, group),
        in_specs=(rows, rows, P(), P()),
        out_specs=(P(), P()),
    )(image.astype(jnp.float32), text.astype(jnp.float32), scale, bias)


def _softmax_local_sum(spec: LossSpec, scorer: PairScorer, image, text, scale, group_batch):
    """This device's rows' share of the summed two-direction (smoothed / decoupled) CE."""
    exclude = spec.kind == "dcl"
    eps = spec.label_smoothing
    # Per row first, then summed: the log-sum-exps and the positives are each far larger
    # than their difference, and summing them separately over many rows loses digits.
    image_lse, text_lse = scorer.lse_both_ways(image, text, scale, exclude)
    per_row = image_lse + text_lse
    per_row -= 2.0 * (1.0 - eps) * scale * jnp.sum(image * text, axis=1)
    total = jnp.sum(per_row)
    if eps:
        image_sum, text_sum = image.sum(0), text.sum(0)
        group_image = jax.lax.psum(image_sum, MEMBER)
        group_text = jax.lax.psum(text_sum, MEMBER)
        spread = image_sum @ group_text + text_sum @ group_image
        total -= eps * scale * spread / group_batch
    return total


def _per_device(image, text, scale, bias, *, spec, scorer, batch, groups, with_metrics):
    scale, bias = varying(scale), varying(bias)
    group_batch = batch // groups
    # Normalisers as Python floats: an int above 2**31 - 1 (e.g. pairs in a batch of
    # 65,536) cannot become the weakly typed int32 that JAX makes of a Python int.
    batch = float(batch)
    if spec.kind == "sigmoid":
        loss = psum_all(sigmoid_local_sum(scorer, image, text, scale, bias)) / batch
    elif spec.kind == "cwcl":
        local = cwcl_local_sum(scorer, image, text, scale, group_batch, spec.cwcl_weights_from)
        loss = psum_all(local) / (2 * batch)
    else:
        local = _softmax_local_sum(spec, scorer, image, text, scale, group_batch)
        loss = psum_all(local) / (2 * batch)
    out = {"contrastive_loss": loss}

    if spec.alignment_weight or with_metrics:
        out["alignment"] = psum_all(alignment_sum(image, text)) / batch
        loss = loss + spec.alignment_weight * out["alignment"]
    uniformity_terms = {  # name: (weight in the loss, rows, columns)
        "uniformity_image": (spec.uniformity_weight / 2, image, image),
        "uniformity_text": (spec.uniformity_weight / 2, text, text),
        "cross_uniformity": (spec.cross_uniformity_weight, image, text),
    }
    for name, (weight, rows, cols) in uniformity_terms.items():
        if weight:
            out[name] = uniformity(scorer, rows, cols, group_batch, groups)
            loss = loss + weight * out[name]
        elif with_metrics and (estimate := local_uniformity(rows, cols)) is not None:
            out[name] = estimate  # logged only: skips the strategy's extra all-pairs pass
    if not with_metrics:
        return loss, {}
    return loss, _geometry_metrics(image, text, scale, bias, spec, batch, groups, out)


def _geometry_metrics(image, text, scale, bias, spec, batch, groups, terms):
    image, text, scale, bias = jax.lax.stop_gradient((image, text, scale, bias))
    group_batch = batch // groups
    image_sum, text_sum = image.sum(0), text.sum(0)
    positive = jnp.sum(image * text)
    group_pairs = jax.lax.psum(image_sum, MEMBER) @ jax.lax.psum(text_sum, MEMBER)
    group_positive = jax.lax.psum(positive, MEMBER)
    negative = (group_pairs - group_positive) / max(group_batch * (group_batch - 1.0), 1.0)
    metrics = {
        "temperature": 1.0 / pmax_all(scale),
        "positive_similarity": psum_all(positive) / batch,
        "negative_similarity": jax.lax.psum(negative, GROUP) / groups,
        "modality_gap": centroid_gap(psum_all(image_sum), psum_all(text_sum), batch),
        **terms,
    }
    if spec.kind == "sigmoid":
        metrics["bias"] = pmax_all(bias)
    return metrics
