"""Initial parameters from `init_from`: a clipjax checkpoint or an HF CLIP directory.

`init_parts` restricts what is read to some top-level groups (LiT reads `("image",)`);
the other parameters keep their fresh initialisation. An HF directory's tower must be
the one the config describes: its fields are compared before any weight is read.
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
    if not is_hf_directory(config.init_from):
        return load_params(config.init_from, target, parts=parts)
    return _from_hf(config, target, tuple(parts) or tuple(target))


def _from_hf(config, target: Any, parts: tuple[str, ...]) -> dict:
    from clipjax.interop.hf_clip import load_hf_clip
    from clipjax.interop.params_tree import fill_params

    imported_cfg, unrolled = load_hf_clip(config.init_from, config.model)
    _check_towers(imported_cfg, config.model, parts, config.init_from)
    subset = {n: v for n, v in unrolled.items() if n.split("/")[0] in parts}
    wanted = {p: target[p] for p in parts}
    host = fill_params(wanted, subset, str(config.init_from))
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
