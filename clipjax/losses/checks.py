"""The `loss` group's checks: the fields each kind reads (any other must be absent or
None), which families each kind fits, and how a strategy splits over the mesh."""

from __future__ import annotations

from clipjax.fieldcheck import type_problems, unused_fields
from clipjax.losses.contrastive import KINDS, LossSpec
from clipjax.losses.strategies import check_group_size
from clipjax.losses.symile import MULTI_KINDS, SYMILE_NEGATIVES

_PAIR_FIELDS = {
    "kind": str,
    "strategy": str,
    "group_size": int,
    "ring_chunk": int,
    "label_smoothing": float,
    "alignment_weight": float,
    "uniformity_weight": float,
    "cross_uniformity_weight": float,
}
_CWCL_FIELDS = {**_PAIR_FIELDS, "cwcl_weights_from": str}
KIND_FIELDS = {
    **{kind: _PAIR_FIELDS for kind in KINDS if kind != "cwcl"},
    "cwcl": _CWCL_FIELDS,
    "symile": {"kind": str, "symile_negatives": str},
    "pairwise": {"kind": str},  # one softmax InfoNCE per pair, on the whole batch
}


def loss_problems(loss, family: str, logit_bias_init, frozen=()) -> list[str]:
    """Every problem of the `loss` group for the model family `family` (`model.name`),
    whose `model.logit_bias_init` and `model.frozen` towers are given."""
    kind = loss.get("kind")
    if kind not in KIND_FIELDS:
        return [f"loss.kind={kind!r} is not one of {tuple(KIND_FIELDS)}"]
    fields = KIND_FIELDS[kind]
    problems = unused_fields(loss, "loss", fields, f"by loss.kind={kind!r}")
    problems += type_problems(loss, "loss", fields)
    if problems:
        return problems
    if kind in MULTI_KINDS:
        if family != "symile":
            problems.append(
                f"loss.kind={kind!r} scores 3 or more modalities; model.name={family!r} has two "
                f"towers (use one of {KINDS})"
            )
        if kind == "symile" and loss.symile_negatives not in SYMILE_NEGATIVES:
            problems.append(
                f"loss.symile_negatives={loss.symile_negatives!r} is not one of {SYMILE_NEGATIVES}"
            )
        return problems
    if family == "symile":
        problems.append(f"model.name='symile' needs loss.kind in {MULTI_KINDS}, got {kind!r}")
    try:
        LossSpec.from_config(loss).check()
    except ValueError as exc:
        problems.append(str(exc))
    if kind == "cwcl" and loss.cwcl_weights_from not in tuple(frozen or ()):
        problems.append(
            f"loss.cwcl_weights_from={loss.cwcl_weights_from!r} is not a frozen tower "
            f"(model.frozen={tuple(frozen or ())}): CWCL takes its weights from a locked, "
            "pretrained tower, as in LiT"
        )
    if kind == "sigmoid" and logit_bias_init is None:
        problems.append("loss.kind='sigmoid' needs model.logit_bias_init (SigLIP uses -10.0)")
    return problems


def loss_split_problems(loss, batch_shards: int) -> list[str]:
    """Whether the strategy's loss groups split `batch_shards` evenly."""
    if loss.get("strategy") != "grouped":
        return []
    try:
        check_group_size(loss.group_size, batch_shards)
    except ValueError as exc:
        return [str(exc)]
    return []
