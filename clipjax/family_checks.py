"""Config checks that depend on the model family: CoCa's decoder, Symile's modalities
and data, LiT's locked tower, and which losses each family can take."""

from __future__ import annotations

import ml_collections

from clipjax.train.objective import MULTI_KINDS

COCA_FIELDS = ("unimodal_depth", "multimodal_depth", "decoder_queries", "pool_heads")
SYMILE_TOWER_KINDS = ("mlp",)


def is_image_text(c) -> bool:
    """True for the families with an image and a text tower (all but Symile)."""
    return c.model.get("name") != "symile"


def family_field_types(c) -> dict[str, type]:
    """Extra required field types of the config's family."""
    name = c.model.get("name")
    if name == "coca":
        weights = {f"model.coca.{f}": float for f in ("contrastive_weight", "caption_weight")}
        return {**{f"model.coca.{f}": int for f in COCA_FIELDS}, **weights}
    if name == "symile":
        return {"data.xor_bits": int, "data.xor_noise": float} if c.data.source == "xor" else {}
    return {}


def family_problems(c) -> list[str]:
    problems: list[str] = []
    name = c.model.get("name")
    if name == "symile":
        _symile(c, problems)
    elif c.loss.kind in MULTI_KINDS:
        problems.append(
            f"loss.kind={c.loss.kind!r} scores 3 or more modalities; model.name={name!r} has "
            "two towers (use softmax, dcl or sigmoid)"
        )
    if name == "coca":
        _coca(c, problems)
    if c.data.source == "xor" and name != "symile":
        problems.append("data.source='xor' gives Symile's three modalities; set model.name=symile")
    _frozen(c, problems)
    return problems


def _coca(c, problems: list[str]) -> None:
    coca = c.model.coca
    for field in COCA_FIELDS:
        if coca[field] < 1:
            problems.append(f"model.coca.{field}={coca[field]} must be at least 1")
    if coca.pool_heads >= 1 and c.model.text.width % coca.pool_heads:
        problems.append(
            f"model.coca.pool_heads={coca.pool_heads} must divide model.text.width="
            f"{c.model.text.width}"
        )
    if c.train.accum_steps != 1:
        problems.append(
            f"train.accum_steps={c.train.accum_steps}: CoCa's captioning loss is not "
            "accumulated; use 1"
        )


def _symile(c, problems: list[str]) -> None:
    modalities = c.model.get("modalities")
    if not isinstance(modalities, ml_collections.ConfigDict) or len(modalities) < 3:
        found = sorted(modalities) if isinstance(modalities, ml_collections.ConfigDict) else None
        problems.append(
            f"model.modalities={found} needs 3 or more towers (name -> kind, input_dim, "
            "width, depth); two modalities are CLIP"
        )
        return
    if c.loss.kind not in MULTI_KINDS:
        problems.append(
            f"model.name='symile' needs loss.kind in {MULTI_KINDS}, got {c.loss.kind!r}"
        )
    for name, tower in modalities.items():
        if tower.get("kind") not in SYMILE_TOWER_KINDS:
            problems.append(
                f"model.modalities.{name}.kind={tower.get('kind')!r} is not one of "
                f"{SYMILE_TOWER_KINDS}"
            )
        for field in ("input_dim", "width"):
            if not isinstance(tower.get(field), int) or tower.get(field) < 1:
                problems.append(
                    f"model.modalities.{name}.{field}={tower.get(field)!r} must be >= 1"
                )
    if c.data.source != "xor":
        problems.append(
            f"model.name='symile' reads vectors per modality; data.source={c.data.source!r} "
            "gives images and texts (use 'xor')"
        )
        return
    if sorted(modalities) != ["a", "b", "c"]:
        problems.append(f"data.source='xor' gives modalities a, b, c, not {sorted(modalities)}")
    for name, tower in modalities.items():
        if tower.get("input_dim") != c.data.xor_bits:
            problems.append(
                f"model.modalities.{name}.input_dim={tower.get('input_dim')} differs from "
                f"data.xor_bits={c.data.xor_bits}"
            )


def _frozen(c, problems: list[str]) -> None:
    frozen = tuple(c.model.get("frozen", ()))
    groups = ("image", "text") if is_image_text(c) else tuple(c.model.get("modalities", {}))
    unknown = [g for g in frozen if g not in groups]
    if unknown:
        problems.append(f"model.frozen={frozen} names {unknown}; expected some of {groups}")
    parts = tuple(c.get("init_parts", ()))
    if parts and not c.get("init_from"):
        problems.append(f"init_parts={parts} is set but init_from is empty")
    if frozen and not c.get("init_from"):
        problems.append(
            f"model.frozen={frozen} locks towers at their random init; set init_from to the "
            "checkpoint to load them from (LiT)"
        )
