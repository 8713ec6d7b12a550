"""OpenCLIP / OpenAI CLIP state dicts -> clipjax.

open_clip's `CLIP` keeps the OpenAI names (`visual.conv1.weight`,
`transformer.resblocks.0.attn.in_proj_weight`, `text_projection`, ...). They are
renamed to the HF layout and imported by `hf_clip`. Head counts and the
activation are not stored in a state dict: they come from open_clip's model-config
JSON or are given (`open_clip_config.resolve_open_clip_shape`), never guessed.
"""

from __future__ import annotations

import math
import re

import ml_collections
import numpy as np

from clipjax.interop.hf_clip import params_from_hf
from clipjax.interop.open_clip_config import (
    OpenClipShape,
    read_open_clip_config,
    resolve_open_clip_shape,
)

IGNORED = ("attn_mask", "input_resolution", "context_length", "vocab_size")
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_NAMES = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}


def _rename(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """HF-named tensors, and the names that have no HF counterpart."""
    out, unknown = {}, []
    for name, value in state.items():
        block = _BLOCK.match(name)
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = value
        elif name == "visual.proj":  # used as x @ proj: [width, embed]
            out["visual_projection.weight"] = value.T
        elif name == "logit_bias":  # SigLIP-style models
            out["logit_bias"] = value
        elif name == "text_projection":
            out["text_projection.weight"] = value.T
        elif name == "text_projection.weight":  # open_clip's nn.Linear variant
            out["text_projection.weight"] = value
        elif block:
            prefix = "vision_model" if block.group(1) else "text_model"
            out.update(
                _rename_block(
                    f"{prefix}.encoder.layers.{block.group(2)}.",
                    block.group(3),
                    value,
                    name,
                    unknown,
                )
            )
        elif not name.endswith(IGNORED):
            unknown.append(name)
    return out, unknown


def _rename_block(prefix: str, rest: str, value: np.ndarray, name: str, unknown: list) -> dict:
    if rest in _BLOCK_NAMES:
        return {prefix + _BLOCK_NAMES[rest]: value}
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]  # weight | bias
        q, k, v = np.split(value, 3, axis=0)
        return {
            f"{prefix}self_attn.{p}_proj.{kind}": t for p, t in zip("qkv", (q, k, v), strict=True)
        }
    unknown.append(name)
    return {}


def _depth(state: dict, visual: bool) -> int:
    layers = {int(m.group(2)) for m in map(_BLOCK.match, state) if m and bool(m.group(1)) == visual}
    return max(layers) + 1 if layers else 0


def check_plain_clip(state: dict[str, np.ndarray]) -> None:
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise ValueError(
            "not an open_clip CLIP state dict with a ViT image tower and a text transformer "
            "(no visual.conv1.weight / token_embedding.weight); timm, ModifiedResNet and "
            "HF-text towers are not supported"
        )


def model_config_from_open_clip(
    state: dict[str, np.ndarray], base: ml_collections.ConfigDict, shape: OpenClipShape
) -> ml_collections.ConfigDict:
    """The clipjax model config a plain open_clip `CLIP` state dict (`check_plain_clip`)
    implies, with the head counts and activation `shape` gives."""
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    text_width = state["token_embedding.weight"].shape[1]
    model = ml_collections.ConfigDict(base.to_dict())
    model.name = "clip"
    model.embed_dim = int(state["visual.proj"].shape[1])
    model.logit_bias_init = -10.0 if "logit_bias" in state else None
    mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    text_mlp = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    model.image.update(
        dict(
            image_size=grid * patch,
            patch_size=int(patch),
            width=int(width),
            depth=_depth(state, True),
            heads=shape.image_heads,
            mlp_ratio=mlp / width,
            act=shape.act,
            pool="cls",
            ln_pre=True,
            patch_bias=False,
        )
    )
    model.text.update(
        dict(
            vocab_size=int(state["token_embedding.weight"].shape[0]),
            context_length=int(state["positional_embedding"].shape[0]),
            width=int(text_width),
            depth=_depth(state, False),
            heads=shape.text_heads,
            mlp_ratio=text_mlp / text_width,
            act=shape.act,
            pool="argmax",
            eos_id=-1,
        )
    )
    return model


def params_from_open_clip(state: dict[str, np.ndarray], model_cfg, source: str) -> dict:
    """clipjax's unrolled flat params from an open_clip `CLIP` state dict."""
    renamed, unknown = _rename(state)
    bias = renamed.pop("logit_bias", None)
    if unknown:
        raise ValueError(f"{source} has weights clipjax's CLIP does not use: {unknown[:8]}")
    params = params_from_hf(renamed, model_cfg, source)
    if bias is not None:
        params["logit_bias"] = np.asarray(bias, np.float32).reshape(())
    return params


def load_open_clip(
    path,
    base: ml_collections.ConfigDict,
    config=None,
    act: str | None = None,
    image_heads: int | None = None,
    text_heads: int | None = None,
) -> tuple[ml_collections.ConfigDict, dict]:
    """(clipjax model config, unrolled flat params) of an open_clip state dict file;
    `config`: open_clip's model-config JSON (a path or its parsed dict), or None with
    `act`, `image_heads` and `text_heads` all given."""
    from clipjax.interop.state_dicts import read_state_dict

    state = read_state_dict(path)
    check_plain_clip(state)
    if config is not None and not isinstance(config, dict):
        config = read_open_clip_config(config)
    shape = resolve_open_clip_shape(state, config, act, image_heads, text_heads)
    model_cfg = model_config_from_open_clip(state, base, shape)
    return model_cfg, params_from_open_clip(state, model_cfg, str(path))
