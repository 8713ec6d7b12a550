"""HF transformers `SiglipModel` checkpoints <-> clipjax.

SigLIP is a configuration of clipjax's two-tower model:

- the image tower is a ViT without class token or pre-norm, whose patch embedding has a
  bias, pooled by a MAP head, with no projection (`image.projection='none'`, so
  `embed_dim` is the vision width);
- the text tower is bidirectional, attends to its padding (`text.mask_padding=False`),
  is pooled at the final position (`text.pool='final'`) and projected with a bias
  (`text.projection='linear_bias'`);
- both towers use the checkpoint's LayerNorm epsilon (`ln_eps`, 1e-6 by default), and
  the model has SigLIP's learned logit bias.

The MAP head's packed `in_proj` (torch `nn.MultiheadAttention`) is split into query,
key and value on import and packed again on export.
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
    block_table,
    encoder_table,
    from_hf_state,
    to_hf_state,
    weights_file,
)
from clipjax.interop.state_dicts import read_state_dict

TEXT_DEFAULTS = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=64,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    pad_token_id=1,
    projection_size=None,
)
VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=True,
)
HEAD = "vision_model.head"
PACKED = f"{HEAD}.attention.in_proj"  # + _weight / _bias: [3W, W] / [3W]


def _probe():
    return (lambda p: p.reshape(1, -1)), (lambda p: p.reshape(1, 1, -1))


def _scalar():
    return (lambda x: np.asarray(x).reshape(())), (lambda x: np.asarray(x).reshape(1))


def name_table(model_cfg) -> list[tuple[str, str, tuple]]:
    """Every (clipjax name, HF name, (to clipjax, to HF)) of a SigLIP-shaped model."""
    v, t = "vision_model", "text_model"
    heads = model_cfg.image.heads
    table = [
        ("image/patch_embed/kernel", f"{v}.embeddings.patch_embedding.weight", CONV),
        ("image/patch_embed/bias", f"{v}.embeddings.patch_embedding.bias", COPY),
        ("image/pos_embed", f"{v}.embeddings.position_embedding.weight", COPY),
        ("image/ln_post/scale", f"{v}.post_layernorm.weight", COPY),
        ("image/ln_post/bias", f"{v}.post_layernorm.bias", COPY),
        ("image/map_head/probe", f"{HEAD}.probe", _probe()),
        ("image/map_head/ln/scale", f"{HEAD}.layernorm.weight", COPY),
        ("image/map_head/ln/bias", f"{HEAD}.layernorm.bias", COPY),
        ("image/map_head/mlp/fc1/kernel", f"{HEAD}.mlp.fc1.weight", LINEAR),
        ("image/map_head/mlp/fc1/bias", f"{HEAD}.mlp.fc1.bias", COPY),
        ("image/map_head/mlp/fc2/kernel", f"{HEAD}.mlp.fc2.weight", LINEAR),
        ("image/map_head/mlp/fc2/bias", f"{HEAD}.mlp.fc2.bias", COPY),
        ("text/token_embed/embedding", f"{t}.embeddings.token_embedding.weight", COPY),
        ("text/pos_embed", f"{t}.embeddings.position_embedding.weight", COPY),
        ("text/ln_final/scale", f"{t}.final_layer_norm.weight", COPY),
        ("text/ln_final/bias", f"{t}.final_layer_norm.bias", COPY),
        ("text/proj/kernel", f"{t}.head.weight", LINEAR),
        ("text/proj/bias", f"{t}.head.bias", COPY),
        ("logit_scale", "logit_scale", _scalar()),
        ("logit_bias", "logit_bias", _scalar()),
    ]
    for ours, theirs, convert in block_table(heads):  # the MAP head's attention
        if ours.startswith("attn/"):
            hf_name = theirs.replace("self_attn.", "attention.")
            table.append((f"image/map_head/{ours}", f"{HEAD}.{hf_name}", convert))
    return table + encoder_table(model_cfg, {"image": v, "text": t})


def _unpack_head(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`in_proj_weight/bias` -> the `q/k/v_proj` names the table uses."""
    state = dict(state)
    for kind in ("weight", "bias"):
        packed = state.pop(f"{PACKED}_{kind}", None)
        if packed is not None:
            for name, part in zip(("q", "k", "v"), np.split(packed, 3), strict=True):
                state[f"{HEAD}.attention.{name}_proj.{kind}"] = part
    return state


def _pack_head(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    state = dict(state)
    for kind in ("weight", "bias"):
        parts = [state.pop(f"{HEAD}.attention.{n}_proj.{kind}") for n in ("q", "k", "v")]
        state[f"{PACKED}_{kind}"] = np.concatenate(parts)
    return state


def _tower(raw: dict | None, defaults: dict) -> dict:
    return {**defaults, **(raw or {})}


def _square(value, field: str) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"vision_config.{field}={value}: clipjax's ViT is square")
        value = value[0]
    return int(value)


def model_config_from_hf_siglip(
    hf: dict, base: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`base` (a clipjax `model` group) with the towers of an HF SiglipConfig."""
    if hf.get("model_type") != "siglip":
        raise ValueError(f"config.json has model_type={hf.get('model_type')!r}; expected 'siglip'")
    vision = _tower(hf.get("vision_config"), VISION_DEFAULTS)
    text = _tower(hf.get("text_config"), TEXT_DEFAULTS)
    width = int(vision["hidden_size"])
    projection = text["projection_size"] or text["hidden_size"]
    problems = []
    if not vision["vision_use_head"]:
        problems.append("vision_config.vision_use_head=false (no pooled image embedding)")
    if vision["num_channels"] != 3:
        problems.append(f"vision_config.num_channels={vision['num_channels']}; expected 3")
    if projection != width:
        problems.append(
            f"text_config.projection_size={projection} differs from the vision width {width}"
        )
    if problems:
        raise ValueError("cannot import this SigLIP: " + "; ".join(problems))
    model = ml_collections.ConfigDict(base.to_dict())
    model.name = "clip"
    model.embed_dim = width
    model.logit_bias_init = -10.0
    model.image.update(
        dict(
            kind="vit",
            image_size=_square(vision["image_size"], "image_size"),
            patch_size=_square(vision["patch_size"], "patch_size"),
            width=width,
            depth=int(vision["num_hidden_layers"]),
            heads=int(vision["num_attention_heads"]),
            mlp_ratio=vision["intermediate_size"] / width,
            act=act(vision["hidden_act"], "vision_config"),
            pool="map",
            ln_pre=False,
            patch_bias=True,
            projection="none",
            ln_eps=float(vision["layer_norm_eps"]),
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
            causal=False,
            mask_padding=False,
            pool="final",
            pad_id=int(text["pad_token_id"] if text["pad_token_id"] is not None else 1),
            projection="linear_bias",
            ln_eps=float(text["layer_norm_eps"]),
        )
    )
    return model


def hf_siglip_config_from_model(model_cfg) -> dict:
    """An HF SiglipConfig dict for a clipjax model with SigLIP's architecture."""
    image, text = model_cfg.image, model_cfg.text
    wanted = {
        "model.name": (model_cfg.name, "clip"),
        "image.kind": (image.get("kind", "vit"), "vit"),
        "image.pool": (image.get("pool"), "map"),
        "image.ln_pre": (image.get("ln_pre"), False),
        "image.patch_bias": (image.get("patch_bias"), True),
        "image.projection": (image.get("projection", "linear"), "none"),
        "text.causal": (text.get("causal", True), False),
        "text.mask_padding": (text.get("mask_padding", True), False),
        "text.pool": (text.get("pool"), "final"),
        "text.projection": (text.get("projection", "linear"), "linear_bias"),
        "logit bias": (model_cfg.get("logit_bias_init") is not None, True),
    }
    problems = [
        f"{k}={have!r} (SigLIP: {want!r})" for k, (have, want) in wanted.items() if have != want
    ]
    problems += [
        f"{name}.act={tower.act!r}"
        for name, tower in (("image", image), ("text", text))
        if tower.act not in CLIPJAX_TO_HF_ACT
    ]
    if problems:
        raise ValueError("this model has no HF SigLIP equivalent: " + "; ".join(problems))
    eps = {n: float(t.get("ln_eps", 1e-5)) for n, t in (("image", image), ("text", text))}
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "text_config": {
            "model_type": "siglip_text_model",
            "vocab_size": int(text.vocab_size),
            "hidden_size": int(text.width),
            "intermediate_size": round(text.width * text.mlp_ratio),
            "num_hidden_layers": int(text.depth),
            "num_attention_heads": int(text.heads),
            "max_position_embeddings": int(text.context_length),
            "hidden_act": CLIPJAX_TO_HF_ACT[text.act],
            "layer_norm_eps": eps["text"],
            "pad_token_id": int(text.get("pad_id", 1)),
            "projection_size": int(model_cfg.embed_dim),
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": int(image.width),
            "intermediate_size": round(image.width * image.mlp_ratio),
            "num_hidden_layers": int(image.depth),
            "num_attention_heads": int(image.heads),
            "image_size": int(image.image_size),
            "patch_size": int(image.patch_size),
            "num_channels": 3,
            "hidden_act": CLIPJAX_TO_HF_ACT[image.act],
            "layer_norm_eps": eps["image"],
            "vision_use_head": True,
        },
    }


def params_from_hf_siglip(state: dict[str, np.ndarray], model_cfg, source: str) -> dict:
    """clipjax's unrolled flat params from an HF SiglipModel state dict."""
    return from_hf_state(_unpack_head(state), name_table(model_cfg), source, "SigLIP")


def params_to_hf_siglip(unrolled: dict[str, np.ndarray], model_cfg) -> dict[str, np.ndarray]:
    return _pack_head(to_hf_state(unrolled, name_table(model_cfg)))


def load_hf_siglip(directory: str | Path, base_model_cfg) -> tuple[ml_collections.ConfigDict, dict]:
    """(clipjax model config, unrolled flat params) of an HF SigLIP directory."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model_cfg = model_config_from_hf_siglip(config, base_model_cfg)
    weights = weights_file(directory)
    return model_cfg, params_from_hf_siglip(read_state_dict(weights), model_cfg, str(weights))


def save_hf_siglip(unrolled: dict[str, np.ndarray], model_cfg, directory: str | Path) -> Path:
    """Writes `config.json` and `model.safetensors` that `SiglipModel.from_pretrained` reads."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    config = hf_siglip_config_from_model(model_cfg)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.astype(np.float32) for k, v in params_to_hf_siglip(unrolled, model_cfg).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
