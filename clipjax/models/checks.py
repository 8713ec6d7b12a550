"""The `model` group's checks, per family: the fields each family and image tower
reads (any other must be absent or None), their types, and their constraints."""

from __future__ import annotations

import ml_collections

from clipjax.fieldcheck import choice, is_unset, positive, type_problems, unused_fields
from clipjax.models import MODELS
from clipjax.models.attention import ATTENTION_CHOICES
from clipjax.models.layers import ACTIVATIONS, PROJECTIONS, REMAT_POLICIES, dtype_of
from clipjax.models.text import TEXT_POOLS
from clipjax.models.two_tower import IMAGE_TOWERS
from clipjax.models.vit import POOLS

_COMMON = {
    "name": str,
    "embed_dim": int,
    "temperature_init": float,
    "dtype": str,
    "param_dtype": str,
    "scan_layers": bool,
    "remat": str,
}
_OPTIONAL = {"logit_bias_init": float, "frozen": tuple}
FAMILY_GROUPS = {
    "clip": ("image", "text"),
    "coca": ("image", "text", "coca"),
    "symile": ("modalities",),
}
NO_LOGIT_BIAS = ("symile",)
NO_ATTENTION = ("symile",)  # MLP towers

_TOWER = {"width": int, "depth": int, "heads": int, "mlp_ratio": float, "act": str}
# Fields added after configs were first saved: absent (an older config.json) means
# the default (a bias-free projection, LayerNorm epsilon 1e-5, padding masked)
IMAGE_OPTIONAL = {"vit": {"projection": str, "ln_eps": float}, "efficientnet": {}}
IMAGE_FIELDS = {
    "vit": {
        **_TOWER,
        **{"kind": str, "image_size": int, "patch_size": int, "pool": str},
        **{"ln_pre": bool, "patch_bias": bool, "patch_dropout": float},
    },
    "efficientnet": {  # any input size: data.image_size sets it
        **{"kind": str, "act": str},
        **{"width_coefficient": float, "depth_coefficient": float, "se_ratio": float},
    },
}
_TEXT = {**_TOWER, "vocab_size": int, "context_length": int, "pad_id": int}
TEXT_FIELDS = {
    "clip": {**_TEXT, "causal": bool, "pool": str, "eos_id": int},
    # CoCa's decoder is causal, pools at its appended CLS token and has
    # model.coca.unimodal_depth + multimodal_depth layers
    "coca": {k: t for k, t in _TEXT.items() if k != "depth"},
}
# Fields added after configs were first saved: absent (an older config.json) means off
TEXT_OPTIONAL = {
    "clip": {"token_dropout": float, "projection": str, "ln_eps": float, "mask_padding": bool},
    "coca": {},
}
COCA_DEPTHS = ("unimodal_depth", "multimodal_depth", "decoder_queries", "pool_heads")
COCA_FIELDS = {
    **{name: int for name in COCA_DEPTHS},
    "contrastive_weight": float,
    "caption_weight": float,
}
SYMILE_TOWERS = {"mlp": {"kind": str, "input_dim": int, "width": int, "depth": int}}


def model_problems(model, image_size: int | None) -> list[str]:
    """Every problem of the `model` group; `image_size` is the data's (None without
    images)."""
    name = model.get("name")
    if name not in MODELS:
        return [f"model.name={name!r} is not one of {tuple(MODELS)}"]
    used = {*_COMMON, *_OPTIONAL, *FAMILY_GROUPS[name]} - (
        {"logit_bias_init"} if name in NO_LOGIT_BIAS else set()
    )
    if name not in NO_ATTENTION:
        used.add("attention")
    problems = unused_fields(model, "model", used, f"by model.name={name!r}")
    problems += type_problems(model, "model", _COMMON)
    problems += type_problems(model, "model", _OPTIONAL, optional=True)
    if name not in NO_ATTENTION:
        # absent in configs saved before it existed: XLA's attention, as they ran
        problems += type_problems(model, "model", {"attention": str}, optional=True)
        if model.get("attention") is not None:
            problems += choice("model.attention", model.attention, ATTENTION_CHOICES)
    missing = [
        g for g in FAMILY_GROUPS[name] if not isinstance(model.get(g), ml_collections.ConfigDict)
    ]
    if missing:
        return [
            *problems,
            f"model.name={name!r} needs the groups {[f'model.{g}' for g in missing]}",
        ]
    if problems:
        return problems  # the checks below do arithmetic on these fields
    problems += _common(model)
    if name == "symile":
        return problems + _symile(model)
    problems += _image(model.image, image_size, name)
    problems += _text(model.text, TEXT_FIELDS[name], TEXT_OPTIONAL[name], name)
    problems += _projection_width(model)
    if name == "coca":
        problems += _coca(model)
    return problems + _frozen(model, ("image", "text"))


def _common(model) -> list[str]:
    problems = []
    for field in ("dtype", "param_dtype"):
        try:
            dtype_of(model[field])
        except ValueError as exc:
            problems.append(str(exc))
    problems += choice("model.remat", model.remat, REMAT_POLICIES)
    if not 0 < model.temperature_init <= 1:
        problems.append(f"model.temperature_init={model.temperature_init} must be in (0, 1]")
    return problems


def _image(image, image_size: int | None, family: str) -> list[str]:
    kind = image.get("kind", "vit")
    if kind not in IMAGE_TOWERS or (family == "coca" and kind != "vit"):
        allowed = ("vit",) if family == "coca" else tuple(IMAGE_TOWERS)
        return [f"model.image.kind={kind!r} is not one of {allowed} (model.name={family!r})"]
    fields, optional = IMAGE_FIELDS[kind], IMAGE_OPTIONAL[kind]
    problems = unused_fields(
        image, "model.image", {**fields, **optional}, f"by model.image.kind={kind!r}"
    )
    problems += type_problems(
        image, "model.image", {k: t for k, t in fields.items() if k != "kind"}
    )
    problems += type_problems(image, "model.image", optional, optional=True)
    if problems:
        return problems
    problems += _head_fields(image, "model.image")
    problems += choice("model.image.act", image.act, ACTIVATIONS)
    if image_size is not None and "image_size" in fields and image.image_size != image_size:
        problems.append(
            f"model.image.image_size={image.image_size} differs from data.image_size={image_size}"
        )
    return problems + (_vit(image) if kind == "vit" else _efficientnet(image))


def _vit(image) -> list[str]:
    problems = choice("model.image.pool", image.pool, POOLS)
    if not 0 <= image.patch_dropout < 1:
        problems.append(f"model.image.patch_dropout={image.patch_dropout} must be in [0, 1)")
    if image.width % image.heads:
        problems.append(f"model.image.width={image.width} is not divisible by heads={image.heads}")
    if image.image_size % image.patch_size:
        problems.append(
            f"model.image.image_size={image.image_size} is not divisible by "
            f"patch_size={image.patch_size}"
        )
    return problems


def _head_fields(tower, where: str) -> list[str]:
    """The optional `projection` and `ln_eps` fields (absent: the defaults)."""
    problems = []
    if not is_unset(tower.get("projection")):
        problems += choice(f"{where}.projection", tower.projection, PROJECTIONS)
    if not is_unset(tower.get("ln_eps")) and not 0 < tower.ln_eps < 1:
        problems.append(f"{where}.ln_eps={tower.ln_eps} must be in (0, 1)")
    return problems


def _projection_width(model) -> list[str]:
    """A tower without a projection hands its width to the embedding space."""
    return [
        f"model.{name}.projection='none' needs model.embed_dim={model.embed_dim} equal to "
        f"model.{name}.width={model[name].width}"
        for name in ("image", "text")
        if model[name].get("projection") == "none" and model[name].get("width") != model.embed_dim
    ]


def _efficientnet(image) -> list[str]:
    problems = []
    for field in ("width_coefficient", "depth_coefficient"):
        problems += positive(f"model.image.{field}", image[field])
    if not 0 <= image.se_ratio <= 1:
        problems.append(f"model.image.se_ratio={image.se_ratio} must be in [0, 1] (0: no SE)")
    return problems


def _text(text, fields: dict[str, type], optional: dict[str, type], family: str) -> list[str]:
    used = {**fields, **optional}
    problems = unused_fields(text, "model.text", used, f"by model.name={family!r}")
    problems += type_problems(text, "model.text", fields)
    problems += type_problems(text, "model.text", optional, optional=True)
    if problems:
        return problems
    problems += choice("model.text.act", text.act, ACTIVATIONS)
    problems += _head_fields(text, "model.text")
    if text.width % text.heads:
        problems.append(f"model.text.width={text.width} is not divisible by heads={text.heads}")
    if "pool" not in fields:
        return problems
    problems += choice("model.text.pool", text.pool, TEXT_POOLS)
    if not 0 <= (text.get("token_dropout") or 0.0) < 1:
        problems.append(f"model.text.token_dropout={text.token_dropout} must be in [0, 1)")
    if text.pool == "cls" and text.causal:
        problems.append(
            "model.text.pool='cls' needs model.text.causal=False: with a causal encoder "
            "position 0 sees only itself"
        )
    if text.pool == "eos" and not 0 <= text.eos_id < text.vocab_size:
        problems.append(
            f"model.text.pool='eos' needs model.text.eos_id in [0, {text.vocab_size}), "
            f"got {text.eos_id}"
        )
    return problems


def text_tokenizer_problems(text, tokenizer_kind: str, vocab_size: int, pad_id: int) -> list[str]:
    """Whether the text tower fits the tokenizer: its ids, its padding, its end token."""
    problems = []
    if vocab_size > text.vocab_size:
        problems.append(
            f"model.text.vocab_size={text.vocab_size} is smaller than the "
            f"{tokenizer_kind!r} tokenizer's {vocab_size} ids"
        )
    pool, causal = text.get("pool"), text.get("causal", True)
    if pool == "argmax" and tokenizer_kind in ("hf", "sentencepiece"):
        problems.append(
            f"model.text.pool='argmax' pools at the largest token id, which is the end token "
            f"only for CLIP-style vocabularies; with tokenizer.kind={tokenizer_kind!r} set "
            f"model.text.pool='last' and model.text.pad_id={pad_id}"
        )
    if text.pad_id != pad_id:
        why = {
            "pool='last' would pool at padding": pool == "last",
            "model.text.causal=False would attend to padding": causal is False,
        }
        for reason, applies in why.items():
            if applies:
                problems.append(
                    f"model.text.pad_id={text.pad_id} but the {tokenizer_kind!r} tokenizer "
                    f"pads with {pad_id}: {reason}"
                )
    return problems


def _coca(model) -> list[str]:
    coca = model.coca
    problems = unused_fields(coca, "model.coca", COCA_FIELDS, "by CoCa")
    problems += type_problems(coca, "model.coca", COCA_FIELDS)
    if problems:
        return problems
    for field in COCA_DEPTHS:
        if coca[field] < 1:
            problems.append(f"model.coca.{field}={coca[field]} must be at least 1")
    if coca.pool_heads >= 1 and model.text.width % coca.pool_heads:
        problems.append(
            f"model.coca.pool_heads={coca.pool_heads} must divide model.text.width="
            f"{model.text.width}"
        )
    return problems


def _symile(model) -> list[str]:
    modalities = model.modalities
    if len(modalities) < 3:
        return [
            f"model.modalities={sorted(modalities)} needs 3 or more towers (name -> kind, "
            "input_dim, width, depth); two modalities are CLIP"
        ]
    problems = []
    for name, tower in modalities.items():
        prefix = f"model.modalities.{name}"
        if (
            not isinstance(tower, ml_collections.ConfigDict)
            or tower.get("kind") not in SYMILE_TOWERS
        ):
            kind = tower.get("kind") if isinstance(tower, ml_collections.ConfigDict) else tower
            problems.append(f"{prefix}.kind={kind!r} is not one of {tuple(SYMILE_TOWERS)}")
            continue
        fields = SYMILE_TOWERS[tower.kind]
        problems += unused_fields(tower, prefix, fields, f"by a {tower.kind!r} tower")
        problems += type_problems(tower, prefix, fields)
        for field in ("input_dim", "width"):
            if isinstance(tower.get(field), int) and tower[field] < 1:
                problems.append(f"{prefix}.{field}={tower[field]} must be >= 1")
    return problems + _frozen(model, tuple(modalities))


def _frozen(model, groups: tuple[str, ...]) -> list[str]:
    frozen = tuple(model.get("frozen") or ())
    unknown = [g for g in frozen if g not in groups]
    if unknown:
        return [f"model.frozen={frozen} names {unknown}; expected some of {groups}"]
    return []
