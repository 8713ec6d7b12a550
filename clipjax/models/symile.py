"""Symile's model: one encoder tower per modality and a learned temperature.

`cfg.modalities` maps a modality name to its tower config, e.g.
`a=dict(kind="mlp", input_dim=5, width=32, depth=2)`. A ConfigDict iterates its keys
sorted, so "modality order" (of `names` and of the embeddings the loss sees) is
alphabetical.
"""

from __future__ import annotations

import jax
from flax import nnx

from clipjax.models.layers import (
    ACTIVATIONS,
    ZEROS,
    check_remat,
    dtype_of,
    init,
    layer_norm,
    projection,
    run_blocks,
    stack_blocks,
)
from clipjax.models.two_tower import l2_normalize, log_scale_param


class ResidualMlpBlock(nnx.Module):
    """`x + gelu(Linear(LayerNorm(x)))`."""

    def __init__(self, width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = layer_norm(width, **kw)
        self.fc = nnx.Linear(
            width,
            width,
            kernel_init=init(nnx.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=init(ZEROS, ("mlp",)),
            **kw,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + ACTIVATIONS["gelu"](self.fc(self.norm(x)))


class MlpTower(nnx.Module):
    """Feature vectors `[B, input_dim]`: Linear to `width`, `depth` residual blocks,
    LayerNorm, bias-free projection to `embed_dim`. With `scan` the blocks are stacked
    on a `layers` axis and run with `nnx.scan`; `remat` as in `layers.Transformer`."""

    def __init__(
        self, cfg, embed_dim: int, *, scan: bool, remat: str, dtype, param_dtype, rngs: nnx.Rngs
    ):
        check_remat(remat)
        if cfg.depth < 0:
            raise ValueError(f"mlp tower depth={cfg.depth} must be >= 0")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_dim, self.remat, self.dtype = cfg.input_dim, remat, dtype
        self.stem = nnx.Linear(
            cfg.input_dim,
            cfg.width,
            kernel_init=init(nnx.initializers.lecun_normal(), (None, "embed")),
            bias_init=init(ZEROS, ("embed",)),
            **kw,
        )

        def block(rngs: nnx.Rngs) -> ResidualMlpBlock:
            return ResidualMlpBlock(cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.blocks = stack_blocks(block, cfg.depth, scan=scan, rngs=rngs)
        self.norm = layer_norm(cfg.width, **kw)
        self.proj = projection(cfg.width, embed_dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"mlp tower expects [B, {self.input_dim}] inputs, got {x.shape}")
        x = self.stem(x.astype(self.dtype))
        return self.proj(self.norm(run_blocks(self.blocks, x, remat=self.remat)))


TOWERS = {"mlp": MlpTower}


class Symile(nnx.Module):
    """Towers `cfg.modalities` (name -> tower config, at least 3), `cfg.embed_dim`,
    `logit_scale` = log(1 / cfg.temperature_init)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.names = tuple(cfg.modalities.keys())
        if len(self.names) < 3:
            raise ValueError(
                f"Symile needs at least 3 modalities, got {list(self.names)}; 2 is just CLIP"
            )
        kw = dict(
            dtype=dtype_of(cfg.dtype),
            param_dtype=dtype_of(cfg.param_dtype),
            rngs=rngs,
            scan=cfg.scan_layers,
            remat=cfg.remat,
        )
        towers = {}
        for name in self.names:
            tower_cfg = cfg.modalities[name]
            if tower_cfg.kind not in TOWERS:
                raise ValueError(
                    f"modalities.{name}.kind={tower_cfg.kind!r} is unknown; "
                    f"expected one of {sorted(TOWERS)}"
                )
            towers[name] = TOWERS[tower_cfg.kind](tower_cfg, cfg.embed_dim, **kw)
        self.towers = nnx.Dict(towers)
        self.logit_scale = log_scale_param(cfg, rngs)

    def encode(self, name: str, x: jax.Array) -> jax.Array:
        """L2-normalised float32 `[B, embed_dim]` embeddings of modality `name`."""
        if name not in self.towers:
            raise ValueError(f"modality {name!r} is unknown; expected one of {list(self.names)}")
        return l2_normalize(self.towers[name](x))

    def train_outputs(self, batch: dict[str, jax.Array], rng: jax.Array | None = None) -> dict:
        """`{"embeddings": {name: [B, d]}}` for every modality, in `self.names` order
        (the MLP towers draw no randomness from `rng`)."""
        missing = [name for name in self.names if name not in batch]
        if missing:
            raise ValueError(f"batch lacks modalities {missing}; it has {sorted(batch)}")
        return {"embeddings": {name: self.encode(name, batch[name]) for name in self.names}}
