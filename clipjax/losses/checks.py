"""The `loss` group's checks: the fields each kind reads (any other must be absent or
None), which families each kind fits, and how a strategy splits over the mesh."""

from __future__ import annotations

from clipjax.fieldcheck import type_problems, unused_fields
from clipjax.losses.contrastive import KINDS, LossSpec
from clipjax.losses.isogclr import ISOGCLR_PARAMETERS, ISogCLRSpec, rho_problems
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
_ISOGCLR_FIELDS = {
    "kind": str,
    "strategy": str,
    "group_size": int,
    "ring_chunk": int,
    **{f"isogclr.{name}": float for name in ISOGCLR_PARAMETERS},
}
KIND_FIELDS = {
    **{kind: _PAIR_FIELDS for kind in KINDS if kind != "cwcl"},
    "cwcl": _CWCL_FIELDS,
    "isogclr": _ISOGCLR_FIELDS,
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
    used = {name.split(".")[0] for name in fields}
    problems = unused_fields(loss, "loss", used, f"by loss.kind={kind!r}")
    if kind == "isogclr":
        return problems or _isogclr_problems(loss, family)
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


def _isogclr_problems(loss, family: str) -> list[str]:
    group = loss.get("isogclr")
    if group is None or not hasattr(group, "keys"):
        return [
            f"loss.isogclr={group!r}: loss.kind='isogclr' needs its group of "
            f"{', '.join(ISOGCLR_PARAMETERS)} (clipjax.models.presets.apply_isogclr sets it)"
        ]
    problems = unused_fields(group, "loss.isogclr", ISOGCLR_PARAMETERS, "by iSogCLR")
    problems += type_problems(loss, "loss", _ISOGCLR_FIELDS)
    if family != "clip":
        problems.append(
            f"loss.kind='isogclr' is for two-tower models (model.name='clip'), not {family!r}"
        )
    return problems or ISogCLRSpec.from_config(loss).problems()


def loss_split_problems(loss, batch_shards: int, batch_size: int) -> list[str]:
    """Whether the strategy's loss groups split `batch_shards` evenly, and iSogCLR's rho
    fits the number of examples each row is contrasted with."""
    grouped = loss.get("strategy") == "grouped"
    if grouped:
        try:
            check_group_size(loss.group_size, batch_shards)
        except ValueError as exc:
            return [str(exc)]
    if loss.get("kind") != "isogclr":
        return []
    contrast = batch_size // batch_shards * loss.group_size if grouped else batch_size
    return rho_problems(loss.isogclr.rho, contrast)
