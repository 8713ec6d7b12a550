"""`clipjax convert`: a checkpoint's params as safetensors and/or npz, config beside.

Names are the params' paths joined by '/', e.g. `image/blocks/0/attn/query/kernel`
(with scanned blocks the leading axis of `blocks/...` is the layer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from clipjax.checkpoint import read_params, resolve_step_dir, run_config_json

FORMATS = ("safetensors", "npz")
HF_FORMAT = "hf"  # an HF CLIPModel directory in out_dir/hf, for CLIP-architecture runs


def export_params(
    checkpoint: str | Path,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    step: int | None = None,
) -> list[Path]:
    """Writes `params.<format>` and `config.json` into `out_dir`; returns the files."""
    unknown = set(formats) - {*FORMATS, HF_FORMAT}
    if unknown or not formats:
        raise ValueError(
            f"formats {sorted(unknown) or formats}; expected some of {(*FORMATS, HF_FORMAT)}"
        )
    root, step = resolve_step_dir(checkpoint, step)
    params, step = read_params(root, step)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    metadata = {"clipjax_step": str(step), "source": str(root / str(step))}
    if "safetensors" in formats:
        from safetensors.numpy import save_file

        save_file(  # np.asarray keeps 0-d params 0-d (ascontiguousarray makes them [1])
            {k: np.asarray(v, order="C") for k, v in params.items()},
            out / "params.safetensors",
            metadata=metadata,
        )
        written.append(out / "params.safetensors")
    if "npz" in formats:
        np.savez(out / "params.npz", **params)
        written.append(out / "params.npz")
    root_dir = Path(str(root))  # the directory of step directories, whatever its name
    config = run_config_json(root_dir) or run_config_json(root_dir.parent)
    if HF_FORMAT in formats:
        written.append(_write_hf(params, config, out / "hf"))
    if config is not None:
        shutil.copyfile(config, out / "config.json")
        written.append(out / "config.json")
    (out / "export.json").write_text(json.dumps({**metadata, "params": len(params)}, indent=1))
    return written


def _write_hf(params: dict[str, np.ndarray], config: Path | None, out: Path) -> Path:
    import ml_collections

    from clipjax.interop.hf_clip import save_hf_clip
    from clipjax.interop.hf_siglip import save_hf_siglip
    from clipjax.interop.params_tree import is_stacked_name, unroll_layers

    if config is None:
        raise FileNotFoundError("--format hf needs the run's config.json beside checkpoints/")
    model_cfg = ml_collections.ConfigDict(json.loads(config.read_text())["model"])
    stacked = {n for n in params if is_stacked_name(n)}
    image = model_cfg.get("image") or {}
    siglip = image.get("pool") == "map" and image.get("projection") == "none"
    save = save_hf_siglip if siglip else save_hf_clip  # SigLIP's towers: an HF SiglipModel
    return save(unroll_layers(params, stacked), model_cfg, out)
