"""What an open_clip state dict cannot say (head counts, activation), read from
open_clip's own model-config JSON (`open_clip/model_configs/ViT-B-32.json`:
`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`) or given explicitly.

Nothing is guessed: without a config, both head counts and the activation must be
given, and a config's sizes must agree with the weights. Config fields describing
towers clipjax's CLIP does not build (timm or HF towers, attention pooling, layer
scale, ...) are refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# open_clip's CLIPVisionCfg / CLIPTextCfg defaults, used for fields a config omits.
VISION_DEFAULTS = dict(
    layers=12, width=768, head_width=64, mlp_ratio=4.0, patch_size=16, image_size=224
)
TEXT_DEFAULTS = dict(
    context_length=77, vocab_size=49408, width=512, heads=8, layers=12, mlp_ratio=4.0
)
# Fields that change nothing at inference, or that say what clipjax builds anyway.
VISION_HARMLESS = {
    "patch_dropout": None,
    "output_tokens": None,
    "pool_type": "tok",
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "timm_model_name": None,
    "act_kwargs": None,
    "norm_kwargs": None,
}
TEXT_HARMLESS = {
    "output_tokens": None,
    "pool_type": "argmax",
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "final_ln_after_pool": False,
    "hf_model_name": None,
    "pad_id": 0,
    "act_kwargs": None,
    "norm_kwargs": None,
    "proj_type": "linear",
}
TOP_LEVEL = {
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "custom_text",
    "init_logit_bias",
    "cast_dtype",
}
ACTS = ("gelu", "quick_gelu")


@dataclass(frozen=True)
class OpenClipShape:
    """The import's settings that the weights do not store."""

    act: str
    image_heads: int
    text_heads: int


def read_open_clip_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config {path} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"open_clip model config {path} is not JSON: {exc}") from exc
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise ValueError(
            f"{path} is not an open_clip model config (expected embed_dim, vision_cfg, text_cfg)"
        )
    return config


def _refuse_unsupported(config: dict) -> None:
    problems = [f"unknown field {k!r}" for k in sorted(set(config) - TOP_LEVEL)]
    if config.get("custom_text"):
        problems.append("custom_text=true (a CustomTextCLIP; only plain CLIP is imported)")
    for group, known, harmless in (
        ("vision_cfg", VISION_DEFAULTS, VISION_HARMLESS),
        ("text_cfg", TEXT_DEFAULTS, TEXT_HARMLESS),
    ):
        for key, value in sorted(config[group].items()):
            if key in known or (key in harmless and value in (None, False, {}, harmless[key])):
                continue
            if key not in harmless:
                problems.append(f"{group}.{key} (not a field clipjax's CLIP import knows)")
            else:
                built = harmless[key]
                problems.append(f"{group}.{key}={value!r} (clipjax's CLIP builds {built!r})")
    if problems:
        raise ValueError(
            "the open_clip config describes a model clipjax cannot import:\n  "
            + "\n  ".join(problems)
        )


def _check_sizes(config: dict, state: dict[str, np.ndarray]) -> None:
    """The config's sizes equal the weights' (a config of another model is caught)."""
    vision = {**VISION_DEFAULTS, **config["vision_cfg"]}
    text = {**TEXT_DEFAULTS, **config["text_cfg"]}
    conv = state["visual.conv1.weight"]
    grid_tokens = state["visual.positional_embedding"].shape[0] - 1
    image_size = vision["image_size"]
    image_size = image_size[0] if isinstance(image_size, list | tuple) else image_size
    pairs = {
        "embed_dim": (config.get("embed_dim"), state["visual.proj"].shape[1]),
        "vision_cfg.width": (vision["width"], conv.shape[0]),
        "vision_cfg.patch_size": (vision["patch_size"], conv.shape[-1]),
        "vision_cfg.image_size": ((image_size // vision["patch_size"]) ** 2, grid_tokens),
        "vision_cfg.layers": (vision["layers"], _layers(state, "visual.transformer.resblocks.")),
        "text_cfg.width": (text["width"], state["token_embedding.weight"].shape[1]),
        "text_cfg.vocab_size": (text["vocab_size"], state["token_embedding.weight"].shape[0]),
        "text_cfg.context_length": (text["context_length"], state["positional_embedding"].shape[0]),
        "text_cfg.layers": (text["layers"], _layers(state, "transformer.resblocks.")),
    }
    wrong = [
        f"{name}: config {said}, weights {held}"
        for name, (said, held) in pairs.items()
        if said is not None and int(said) != int(held)
    ]
    if wrong:
        raise ValueError(
            "the open_clip config does not describe these weights:\n  " + "\n  ".join(wrong)
        )


def _layers(state: dict, prefix: str) -> int:
    found = {int(n[len(prefix) :].split(".")[0]) for n in state if n.startswith(prefix)}
    return max(found) + 1 if found else 0


def _heads(width: int, heads: int, where: str) -> int:
    if heads < 1 or width % heads:
        raise ValueError(f"{where}: {heads} heads do not split width {width}")
    return heads


def resolve_open_clip_shape(
    state: dict[str, np.ndarray],
    config: dict | None = None,
    act: str | None = None,
    image_heads: int | None = None,
    text_heads: int | None = None,
) -> OpenClipShape:
    """Head counts and activation from the open_clip `config` (checked against the
    weights) or from the explicit arguments; an explicit value that contradicts the
    config, or a missing one without a config, is refused."""
    if act is not None and act not in ACTS:
        raise ValueError(f"act={act!r}; expected one of {ACTS}")
    image_width = int(state["visual.conv1.weight"].shape[0])
    text_width = int(state["token_embedding.weight"].shape[1])
    if config is None:
        missing = [
            n
            for n, v in (("image_heads", image_heads), ("text_heads", text_heads), ("act", act))
            if v is None
        ]
        if missing:
            raise ValueError(
                f"an open_clip state dict does not store {', '.join(missing)} (image width "
                f"{image_width}, text width {text_width}): give the model's open_clip config "
                "JSON (open_clip/model_configs/NAME.json), or all of image_heads, text_heads "
                "and act"
            )
        return OpenClipShape(
            act,
            _heads(image_width, image_heads, "image tower"),
            _heads(text_width, text_heads, "text tower"),
        )
    _refuse_unsupported(config)
    _check_sizes(config, state)
    vision = {**VISION_DEFAULTS, **config["vision_cfg"]}
    text = {**TEXT_DEFAULTS, **config["text_cfg"]}
    resolved = OpenClipShape(
        "quick_gelu" if config.get("quick_gelu") else "gelu",
        _heads(image_width, image_width // int(vision["head_width"]), "vision_cfg.head_width"),
        _heads(text_width, int(text["heads"]), "text_cfg.heads"),
    )
    given = dict(act=act, image_heads=image_heads, text_heads=text_heads)
    clashes = [
        f"{name}={value!r} but the config says {getattr(resolved, name)!r}"
        for name, value in given.items()
        if value is not None and value != getattr(resolved, name)
    ]
    if clashes:
        raise ValueError("explicit settings contradict the open_clip config: " + "; ".join(clashes))
    return resolved
