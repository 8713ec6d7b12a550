"""What `clipjax.load` reads: a path told apart by its files, turned into the full
config (model, preprocessing, tokenizer) and flat unrolled params.

- a clipjax workdir, its `checkpoints/` or one step directory (`config.json` of the run);
- a `clipjax convert` export (`export.json`, `params.safetensors|npz`, `config.json`);
- an HF CLIP directory (`config.json` with `model_type` "clip" and its weights);
- an open_clip state dict file, with open_clip's model-config JSON (or the head
  counts and activation given explicitly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_collections
import numpy as np

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
STATE_DICT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class Loaded:
    """A whole config and the params it describes (flat, unrolled names)."""

    config: ml_collections.ConfigDict
    params: dict[str, np.ndarray]
    source: str  # a description for messages: the kind and the path


def read_source(
    path: str | Path,
    step: int | None = None,
    open_clip_config: str | Path | dict | None = None,
    act: str | None = None,
    image_heads: int | None = None,
    text_heads: int | None = None,
) -> Loaded:
    """Reads whichever of the four kinds `path` is; refuses options that do not apply."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist (expected a clipjax workdir, checkpoint, "
            "export, HF directory or open_clip state dict)"
        )
    open_clip_given = any(v is not None for v in (open_clip_config, act, image_heads, text_heads))
    if path.is_file():
        if step is not None:
            raise ValueError("step applies to a clipjax workdir or checkpoint only")
        return _open_clip(path, open_clip_config, act, image_heads, text_heads)
    if open_clip_given:
        raise ValueError(
            f"open_clip_config, act, image_heads and text_heads apply to an open_clip state "
            f"dict file; {path} is a directory"
        )
    if (path / "export.json").is_file():
        if step is not None:
            raise ValueError(f"{path} is a clipjax export of one step; step does not apply")
        return _export(path)
    hf_type = _hf_model_type(path)
    if hf_type is not None:
        if step is not None:
            raise ValueError(f"{path} is an HF directory; step does not apply")
        return _hf(path, hf_type)
    return _checkpoint(path, step)


def _hf_model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file() or not any((path / w).is_file() for w in HF_WEIGHTS):
        return None
    return json.loads(config.read_text()).get("model_type")


def _run_config(path: Path) -> ml_collections.ConfigDict:
    """The run's config.json in or above `path`, as `clipjax eval` reads it."""
    from clipjax.evaluate.standalone import checkpoint_config

    return checkpoint_config(str(path), None)


def _checkpoint(path: Path, step: int | None) -> Loaded:
    from clipjax.checkpoint import read_params, run_config_json

    config_json = run_config_json(str(path))
    if config_json is None:
        raise FileNotFoundError(
            f"{path} is not a clipjax workdir, checkpoint, export or HF directory: no "
            "config.json or export.json in it or above its checkpoints/"
        )
    config = _run_config(path)
    flat, step = read_params(path, step)
    return Loaded(config, _unrolled(flat), f"clipjax checkpoint {path} step {step}")


def _export(path: Path) -> Loaded:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the export {path} has no config.json (the run's config)")
    config = _run_config(path)
    if (path / "params.safetensors").is_file():
        from safetensors.numpy import load_file

        flat = load_file(str(path / "params.safetensors"))
    elif (path / "params.npz").is_file():
        with np.load(path / "params.npz") as data:
            flat = {name: data[name] for name in data.files}
    else:
        raise FileNotFoundError(f"the export {path} has no params.safetensors or params.npz")
    return Loaded(config, _unrolled(flat), f"clipjax export {path}")


def _unrolled(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from clipjax.interop.params_tree import is_stacked_name, unroll_layers

    return unroll_layers(flat, {name for name in flat if is_stacked_name(name)})


def _imported_config(model_cfg) -> ml_collections.ConfigDict:
    """The embedded default config around an imported model (see
    `adopt_imported_model`)."""
    from clipjax.config import load_config
    from clipjax.evaluate.standalone import adopt_imported_model

    config = load_config(None)
    adopt_imported_model(config, model_cfg)
    return config


def _hf(path: Path, model_type: str) -> Loaded:
    from clipjax.config import load_config
    from clipjax.interop.hf_clip import load_hf_clip
    from clipjax.interop.hf_siglip import load_hf_siglip

    readers = {"clip": (load_hf_clip, "CLIP"), "siglip": (load_hf_siglip, "SigLIP")}
    if model_type not in readers:
        raise ValueError(
            f"{path} holds an HF {model_type!r} model; clipjax.load reads HF "
            f"{' and '.join(repr(k) for k in readers)} directories"
        )
    read, family = readers[model_type]
    model_cfg, params = read(path, load_config(None).model)
    config = _imported_config(model_cfg)
    if model_type == "siglip":  # SigLIP's preprocessing: pixels scaled to [-1, 1], and
        with config.unlocked():  # resized to the square without a crop (HF and open_clip)
            config.data.mean, config.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            config.data.eval_resize = "squash"
    return Loaded(config, params, f"HF {family} {path}")


def _open_clip(path: Path, config, act, image_heads, text_heads) -> Loaded:
    from clipjax.config import load_config
    from clipjax.interop.open_clip import load_open_clip

    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(
            f"{path} is a file but not a state dict ({'/'.join(STATE_DICT_SUFFIXES)}); a "
            "clipjax model is a workdir or export directory"
        )
    model_cfg, params = load_open_clip(
        path, load_config(None).model, config, act, image_heads, text_heads
    )
    return Loaded(_imported_config(model_cfg), params, f"open_clip {path}")
