"""Loading params at another image resolution or text context length.

A ViT's learned position embeddings form a grid; at a new resolution the grid is
resampled bicubically in 2-D and the class token's position (when the model has
one) is kept as it is, as open_clip and timm do. Text positions are learned per
index: a shorter context keeps the first ones, so every caption that fits embeds
exactly as before; a longer one keeps them all and gives the new positions the last
learned one (a starting point for fine-tuning on longer captions, not a model that
has learned them).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

IMAGE_POS = "image/pos_embed"
TEXT_POS = "text/pos_embed"


def resample_grid(pos: np.ndarray, old_grid: int, new_grid: int, prefix_tokens: int) -> np.ndarray:
    """`[prefix + old_grid², W]` -> `[prefix + new_grid², W]`: the grid bicubically
    resampled (antialiased when shrinking), the prefix (class token) unchanged."""
    prefix, grid = pos[:prefix_tokens], pos[prefix_tokens:]
    if grid.shape[0] != old_grid * old_grid:
        raise ValueError(
            f"{grid.shape[0]} position embeddings after {prefix_tokens} prefix tokens; "
            f"expected a {old_grid}x{old_grid} grid"
        )
    width = grid.shape[-1]
    square = np.asarray(grid, np.float32).reshape(old_grid, old_grid, width)
    resized = jax.image.resize(square, (new_grid, new_grid, width), method="cubic")
    out = np.concatenate([prefix, np.asarray(resized).reshape(new_grid * new_grid, width)])
    return out.astype(pos.dtype)


def resize_context(pos: np.ndarray, length: int) -> np.ndarray:
    """`[L, W]` -> `[length, W]`: the first positions kept, new ones copy the last."""
    if length <= pos.shape[0]:
        return pos[:length]
    extra = np.repeat(pos[-1:], length - pos.shape[0], axis=0)
    return np.concatenate([pos, extra])


def resize_params(
    unrolled: dict[str, np.ndarray],
    model_cfg: ml_collections.ConfigDict,
    image_size: int | None = None,
    context_length: int | None = None,
) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
    """(model config, params) for `image_size` and/or `context_length` (None keeps)."""
    cfg = ml_collections.ConfigDict(model_cfg.to_dict())
    params = dict(unrolled)
    if image_size is not None and image_size != cfg.image.image_size:
        _resize_image(params, cfg, image_size)
    if context_length is not None and context_length != cfg.text.context_length:
        if context_length < 1:
            raise ValueError(f"context_length={context_length}; expected a positive length")
        if TEXT_POS not in params:
            raise ValueError(f"a {cfg.name} model has no {TEXT_POS} to resize")
        params[TEXT_POS] = resize_context(params[TEXT_POS], context_length)
        cfg.text.context_length = context_length
    return cfg, params


def _resize_image(params: dict[str, np.ndarray], cfg, image_size: int) -> None:
    image = cfg.image
    if image.get("kind", "vit") != "vit":  # convolutional towers take any size
        image.image_size = image_size
        return
    patch = image.patch_size
    if image_size % patch or image_size < patch:
        raise ValueError(
            f"image_size={image_size} is not a multiple of the ViT's patch size {patch}"
        )
    if IMAGE_POS not in params:
        raise ValueError(f"a {cfg.name} model has no {IMAGE_POS} to resize")
    prefix = 1 if image.pool == "cls" else 0
    params[IMAGE_POS] = resample_grid(
        params[IMAGE_POS], image.image_size // patch, image_size // patch, prefix
    )
    image.image_size = image_size
