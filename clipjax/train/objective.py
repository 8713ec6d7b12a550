"""What a train step minimises, assembled from a model's `train_outputs`.

Every model family returns `{"embeddings": {modality: [B, d]}, ...}` (and CoCa a
`"caption_loss"`). Two modalities take the cross-device contrastive loss
(`loss.kind` softmax / dcl / sigmoid with its strategy); three or more take
Symile's loss (`loss.kind="symile"`) or the pairwise-CLIP baseline
(`loss.kind="pairwise"`). CoCa adds `caption_weight x` its captioning loss.
iSogCLR (`loss.kind="isogclr"`) also reads and updates the batch's per-example state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from clipjax.losses import KINDS, LossSpec, contrastive_loss
from clipjax.losses.isogclr import ISogCLRSpec, isogclr_loss
from clipjax.losses.symile import MULTI_KINDS, SYMILE_NEGATIVES
from clipjax.parallel import MeshAxes

Objective = Callable[..., tuple[jax.Array, dict]]
# The metrics entry under which an objective with per-example state returns the batch's
# new rows; the step writes them back and never logs them.
EXAMPLE_UPDATES = "example_updates"
PER_EXAMPLE_KINDS = ("isogclr",)


@dataclass(frozen=True)
class ObjectiveSpec:
    """The loss group's kind plus the weights of the terms that are summed."""

    kind: str = "softmax"
    contrastive_weight: float = 1.0
    caption_weight: float = 0.0
    symile_negatives: str = "n"

    @classmethod
    def from_config(cls, config) -> ObjectiveSpec:
        coca = config.model.get("coca") or {}
        return cls(
            kind=config.loss.kind,
            contrastive_weight=float(coca.get("contrastive_weight", 1.0)),
            caption_weight=float(coca.get("caption_weight", 0.0)),
            symile_negatives=config.loss.get("symile_negatives") or "n",  # pairwise: unset
        )

    def check(self) -> None:
        kinds = KINDS + MULTI_KINDS + PER_EXAMPLE_KINDS
        if self.kind not in kinds:
            raise ValueError(f"loss.kind={self.kind!r} is not one of {kinds}")
        if self.symile_negatives not in SYMILE_NEGATIVES:
            raise ValueError(
                f"loss.symile_negatives={self.symile_negatives!r} is not one of {SYMILE_NEGATIVES}"
            )


def objective_from_config(config, mesh: Mesh, batch_axes: MeshAxes) -> Objective:
    """The objective the config's `loss` and `model` groups describe."""
    spec = ObjectiveSpec.from_config(config)
    if spec.kind == "isogclr":
        return isogclr_objective(ISogCLRSpec.from_config(config.loss), mesh, batch_axes)
    loss_spec = LossSpec() if spec.kind in MULTI_KINDS else LossSpec.from_config(config.loss)
    return make_objective(spec, loss_spec, mesh, batch_axes)


def isogclr_objective(spec: ISogCLRSpec, mesh: Mesh, batch_axes: MeshAxes) -> Objective:
    """iSogCLR on a two-tower model's embeddings and the batch's per-example state."""

    def objective(outputs: dict, params: dict, rng: jax.Array, examples: dict | None = None):
        if examples is None:
            raise ValueError("loss.kind='isogclr' needs the batch's per-example state")
        embeddings = outputs["embeddings"]
        loss, metrics, updates = isogclr_loss(
            embeddings["image"], embeddings["text"], examples,
            mesh=mesh, batch_axes=batch_axes, spec=spec,
        )  # fmt: skip
        return loss, {**metrics, EXAMPLE_UPDATES: updates}

    return objective


def make_objective(
    spec: ObjectiveSpec, loss_spec: LossSpec, mesh: Mesh, batch_axes: MeshAxes
) -> Objective:
    """`objective(outputs, params, rng) -> (loss, metrics)`; `rng` varies per step
    (Symile's O(N) negatives draw their permutations from it)."""
    spec.check()

    def contrastive(embeddings: dict, params: dict, rng: jax.Array):
        names = list(embeddings)
        if spec.kind in MULTI_KINDS:
            return _multi_modal(spec, embeddings, params["logit_scale"], rng)
        if len(names) != 2:
            raise ValueError(
                f"loss.kind={spec.kind!r} contrasts two modalities, the model gives {names}; "
                f"use one of {MULTI_KINDS} for more"
            )
        first, second = (embeddings[n] for n in names)
        return contrastive_loss(
            first,
            second,
            params["logit_scale"],
            params.get("logit_bias"),
            mesh=mesh,
            batch_axes=batch_axes,
            spec=loss_spec,
        )

    def objective(outputs: dict, params: dict, rng: jax.Array, examples: dict | None = None):
        loss, metrics = contrastive(outputs["embeddings"], params, rng)
        if "caption_loss" not in outputs:
            return loss, metrics
        caption = outputs["caption_loss"]
        metrics = {**metrics, "contrastive_loss": loss, "caption_loss": caption}
        return spec.contrastive_weight * loss + spec.caption_weight * caption, metrics

    return objective


def _multi_modal(spec: ObjectiveSpec, embeddings: dict, log_scale, rng):
    from clipjax.losses.symile import pairwise_clip_loss, symile_loss

    names = list(embeddings)
    values = [embeddings[name].astype(jnp.float32) for name in names]
    if spec.kind == "pairwise":
        loss, metrics = pairwise_clip_loss(values, log_scale, names=names)
    else:
        loss, metrics = symile_loss(
            values, log_scale, negatives=spec.symile_negatives, rng=rng, names=names
        )
    return loss, metrics  # both report each term and the temperature
