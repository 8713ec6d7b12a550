"""HF transformers CLIP checkpoints (`config.json` + `model.safetensors`) <-> clipjax.

The HF layout stores torch `Linear` weights as `[out, in]`; clipjax keeps
`[in, out]` kernels and splits attention projections into `(heads, head_dim)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np

from clipjax.interop.hf_layout import (
    CLIPJAX_TO_HF_ACT,
    CONV,
    COPY,
    LINEAR,
    act,
    encoder_table,
    from_hf_state,
    to_hf_state,
    weights_file,
)
from clipjax.interop.state_dicts import read_state_dict

LEGACY_ARGMAX_EOS = 2  # HF pools at the argmax of the ids when eos_token_id == 2
TEXT_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    eos_token_id=49407,
)
VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    num_channels=3,
)
LAYER_NORM_EPS = 1e-5  # clipjax's LayerNorm epsilon
TOWERS = {"image": "vision_model", "text": "text_model"}


def name_table(model_cfg) -> list[tuple[str, str, tuple]]:
    """Every (clipjax name, HF name, (to clipjax, to HF)) of a two-tower model."""
    v, t = "vision_model", "text_model"
    table = [
        ("image/patch_embed/kernel", f"{v}.embeddings.patch_embedding.weight", CONV),
        ("image/cls_token", f"{v}.embeddings.class_embedding", COPY),
        ("image/pos_embed", f"{v}.embeddings.position_embedding.weight", COPY),
        ("image/ln_pre/scale", f"{v}.pre_layrnorm.weight", COPY),
        ("image/ln_pre/bias", f"{v}.pre_layrnorm.bias", COPY),
        ("image/ln_post/scale", f"{v}.post_layernorm.weight", COPY),
        ("image/ln_post/bias", f"{v}.post_layernorm.bias", COPY),
        ("image/proj/kernel", "visual_projection.weight", LINEAR),
        ("text/token_embed/embedding", f"{t}.embeddings.token_embedding.weight", COPY),
        ("text/pos_embed", f"{t}.embeddings.position_embedding.weight", COPY),
        ("text/ln_final/scale", f"{t}.final_layer_norm.weight", COPY),
        ("text/ln_final/bias", f"{t}.final_layer_norm.bias", COPY),
        ("text/proj/kernel", "text_projection.weight", LINEAR),
        ("logit_scale", "logit_scale", COPY),
    ]
    return table + encoder_table(model_cfg, TOWERS)


# ---- configs ---------------------------------------------------------------------------


def _tower_config(raw: dict | None, defaults: dict, where: str) -> dict:
    merged = {**defaults, **(raw or {})}
    eps = merged.get("layer_norm_eps", LAYER_NORM_EPS)
    if abs(eps - LAYER_NORM_EPS) > 1e-12:
        raise ValueError(
            f"{where}.layer_norm_eps={eps}; clipjax's layer norms use {LAYER_NORM_EPS}"
        )
    return merged


def model_config_from_hf(hf: dict, base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`base` (a clipjax `model` config group) with the towers of an HF CLIPConfig."""
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"config.json has model_type={hf.get('model_type')!r}; expected 'clip'")
    # transformers lets the older `*_config_dict` keys win over `*_config`
    vision_raw = {**(hf.get("vision_config") or {}), **(hf.get("vision_config_dict") or {})}
    text_raw = {**(hf.get("text_config") or {}), **(hf.get("text_config_dict") or {})}
    vision = _tower_config(vision_raw, VISION_DEFAULTS, "vision_config")
    text = _tower_config(text_raw, TEXT_DEFAULTS, "text_config")
    if vision["num_channels"] != 3:
        raise ValueError(f"vision_config.num_channels={vision['num_channels']}; expected 3")
    eos = text["eos_token_id"]
    model = ml_collections.ConfigDict(base.to_dict())
    model.name = "clip"
    model.embed_dim = int(hf.get("projection_dim", 512))
    model.logit_bias_init = None
    model.image.update(
        dict(
            image_size=int(vision["image_size"]),
            patch_size=int(vision["patch_size"]),
            width=int(vision["hidden_size"]),
            depth=int(vision["num_hidden_layers"]),
            heads=int(vision["num_attention_heads"]),
            mlp_ratio=vision["intermediate_size"] / vision["hidden_size"],
            act=act(vision["hidden_act"], "vision_config"),
            pool="cls",
            ln_pre=True,
            patch_bias=False,
        )
    )
    model.text.update(
        dict(
            vocab_size=int(text["vocab_size"]),
            context_length=int(text["max_position_embeddings"]),
            width=int(text["hidden_size"]),
            depth=int(text["num_hidden_layers"]),
            heads=int(text["num_attention_heads"]),
            mlp_ratio=text["intermediate_size"] / text["hidden_size"],
            act=act(text["hidden_act"], "text_config"),
            pool="argmax" if eos == LEGACY_ARGMAX_EOS else "eos",
            eos_id=-1 if eos == LEGACY_ARGMAX_EOS else int(eos),
        )
    )
    return model


def hf_config_from_model(model_cfg, logit_scale: float) -> dict:
    """An HF CLIPConfig dict for a clipjax model that has the HF architecture."""
    if model_cfg.name != "clip":
        raise ValueError(f"model.name={model_cfg.name!r} has no HF CLIP equivalent (only 'clip')")
    image, text = model_cfg.image, model_cfg.text
    problems = []
    vit = image.get("kind", "vit") == "vit"
    if not vit:
        problems.append(f"image kind={image.kind!r} (HF CLIP: a ViT)")
    if not text.get("causal", True):
        problems.append("a bidirectional text encoder (HF CLIP's is causal)")
    if vit and (image.pool != "cls" or not image.ln_pre or image.patch_bias):
        problems.append(
            f"image pool={image.pool!r}, ln_pre={image.ln_pre}, patch_bias={image.patch_bias} "
            "(HF CLIP: pool='cls', ln_pre=True, patch_bias=False)"
        )
    if text.get("pool", "argmax") not in ("argmax", "eos"):
        problems.append(f"text pool={text.pool!r} (HF CLIP pools at argmax or the eos id)")
    if model_cfg.get("logit_bias_init") is not None:
        problems.append("a learned logit bias (SigLIP); HF CLIPModel has none")
    for tower in (image, text):
        if tower.act not in CLIPJAX_TO_HF_ACT:
            problems.append(f"activation {tower.act!r}")
    if problems:
        raise ValueError("this model has no HF CLIP equivalent: " + "; ".join(problems))
    eos = LEGACY_ARGMAX_EOS if text.get("pool", "argmax") == "argmax" else int(text.eos_id)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": int(model_cfg.embed_dim),
        "logit_scale_init_value": float(logit_scale),
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": int(text.vocab_size),
            "hidden_size": int(text.width),
            "intermediate_size": round(text.width * text.mlp_ratio),
            "num_hidden_layers": int(text.depth),
            "num_attention_heads": int(text.heads),
            "max_position_embeddings": int(text.context_length),
            "hidden_act": CLIPJAX_TO_HF_ACT[text.act],
            "layer_norm_eps": LAYER_NORM_EPS,
            "projection_dim": int(model_cfg.embed_dim),
            "eos_token_id": eos,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": int(image.width),
            "intermediate_size": round(image.width * image.mlp_ratio),
            "num_hidden_layers": int(image.depth),
            "num_attention_heads": int(image.heads),
            "image_size": int(image.image_size),
            "patch_size": int(image.patch_size),
            "num_channels": 3,
            "hidden_act": CLIPJAX_TO_HF_ACT[image.act],
            "layer_norm_eps": LAYER_NORM_EPS,
            "projection_dim": int(model_cfg.embed_dim),
        },
    }


# ---- weights ---------------------------------------------------------------------------


def params_from_hf(state: dict[str, np.ndarray], model_cfg, source: str) -> dict:
    """clipjax's unrolled flat params from an HF CLIPModel state dict."""
    state = {k.removeprefix("clip."): v for k, v in state.items()}
    return from_hf_state(state, name_table(model_cfg), source, "CLIP")


def params_to_hf(unrolled: dict[str, np.ndarray], model_cfg) -> dict[str, np.ndarray]:
    """The inverse of `params_from_hf`."""
    return to_hf_state(unrolled, name_table(model_cfg))


def load_hf_clip(directory: str | Path, base_model_cfg) -> tuple[ml_collections.ConfigDict, dict]:
    """(clipjax model config, unrolled flat params) of an HF CLIP directory."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} does not exist (expected an HF CLIP directory "
            "with config.json and model.safetensors)"
        )
    model_cfg = model_config_from_hf(json.loads(config_path.read_text()), base_model_cfg)
    weights = weights_file(directory)
    return model_cfg, params_from_hf(read_state_dict(weights), model_cfg, str(weights))


def save_hf_clip(unrolled: dict[str, np.ndarray], model_cfg, directory: str | Path) -> Path:
    """Writes `config.json` and `model.safetensors` that `CLIPModel.from_pretrained` reads."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    logit_scale = float(np.asarray(unrolled["logit_scale"]))
    config = hf_config_from_model(model_cfg, logit_scale)
    tensors = {k: v.astype(np.float32) for k, v in params_to_hf(unrolled, model_cfg).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
