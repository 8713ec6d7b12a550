"""Initial parameters from `init_from`: a clipjax checkpoint or an HF CLIP directory.

`init_parts` restricts what is read to some top-level groups (LiT reads `("image",)`);
the other parameters keep their fresh initialisation. An HF directory's tower must be
the one the config describes: its fields are compared before any weight is read.

The source may differ from the config in image size (the ViT's position grid is
resampled), text context length, and scanned or unrolled layers: such a source is
read onto the host, converted (`clipjax.interop.resize`) and then placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from clipjax.checkpoint import load_params

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOWER_FIELDS = {  # the fields that decide an imported tower's function
    "image": (
        *("image_size", "patch_size", "width", "depth", "heads", "mlp_ratio", "act"),
        *("pool", "ln_pre", "patch_bias"),
    ),
    "text": ("vocab_size", "context_length", "width", "depth", "heads", "mlp_ratio", "act"),
}


def is_hf_directory(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any((path / f).is_file() for f in HF_WEIGHTS)


def initial_params(config, target: Any, parts: Sequence[str] = ()) -> dict:
    """The params `config.init_from` holds for `target`'s groups `parts` (all if empty),
    placed with `target`'s shardings."""
    parts = tuple(parts) or tuple(target)
    if is_hf_directory(config.init_from):
        return _from_hf(config, target, parts)
    source_model = _source_model_config(config.init_from)
    if source_model is None or not _needs_conversion(source_model, config.model):
        return load_params(config.init_from, target, parts=parts)
    return _from_converted_checkpoint(config, source_model, target, parts)


def _source_model_config(init_from: str):
    """The model config of the run `init_from` belongs to, or None (no config.json)."""
    import json

    import ml_collections

    from clipjax.checkpoint import run_config_json

    path = run_config_json(init_from)
    if path is None:
        return None
    return ml_collections.ConfigDict(json.loads(path.read_text())["model"])


def _sizes(model_cfg) -> tuple:
    image, text = model_cfg.get("image"), model_cfg.get("text")
    return (
        image.get("image_size") if image else None,
        text.get("context_length") if text else None,
        model_cfg.get("scan_layers", False),
    )


def _needs_conversion(source_model, model) -> bool:
    return _sizes(source_model) != _sizes(model)


def _resized(unrolled: dict, source_model, model) -> tuple[Any, dict]:
    from clipjax.interop.resize import resize_params

    image, text = model.get("image"), model.get("text")
    return resize_params(
        unrolled,
        source_model,
        image.get("image_size") if image else None,
        text.get("context_length") if text else None,
    )


def _from_converted_checkpoint(config, source_model, target: Any, parts: tuple) -> dict:
    from clipjax.checkpoint import read_params
    from clipjax.interop.params_tree import is_stacked_name, unroll_layers

    flat, step = read_params(config.init_from)
    unrolled = unroll_layers(flat, {n for n in flat if is_stacked_name(n)})
    _, converted = _resized(unrolled, source_model, config.model)
    return _placed(converted, target, parts, f"{config.init_from} step {step}")


def _from_hf(config, target: Any, parts: tuple[str, ...]) -> dict:
    from clipjax.interop.hf_clip import load_hf_clip

    imported_cfg, unrolled = load_hf_clip(config.init_from, config.model)
    imported_cfg, unrolled = _resized(unrolled, imported_cfg, config.model)
    _check_towers(imported_cfg, config.model, parts, config.init_from)
    return _placed(unrolled, target, parts, str(config.init_from))


def _placed(unrolled: dict, target: Any, parts: tuple[str, ...], source: str) -> dict:
    """`target`'s groups `parts` filled from flat unrolled params, on `target`'s devices."""
    from clipjax.interop.params_tree import fill_params

    subset = {n: v for n, v in unrolled.items() if n.split("/")[0] in parts}
    wanted = {p: target[p] for p in parts}
    host = fill_params(wanted, subset, source)
    return jax.tree.map(
        lambda value, like: jax.device_put(np.asarray(value), like.sharding), host, wanted
    )


def _check_towers(imported, model, parts: tuple[str, ...], source) -> None:
    problems = [
        f"model.{tower}.{field}={model[tower].get(field)!r} but {source} has "
        f"{imported[tower].get(field)!r}"
        for tower in parts
        if tower in TOWER_FIELDS
        for field in TOWER_FIELDS[tower]
        if model[tower].get(field) != imported[tower].get(field)
    ]
    if problems:
        raise ValueError("init_from's towers differ from the config's:\n  " + "\n  ".join(problems))
