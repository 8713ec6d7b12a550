"""EfficientNet image tower (ALIGN), scaled by width and depth coefficients.

The stage table is EfficientNet-B0's (Tan & Le, 2019): MBConv blocks with an
inverted-bottleneck expansion, a depthwise convolution, squeeze-and-excitation
and swish, widths rounded to multiples of 8 and repeats rounded up, then a 1x1
head convolution, global average pooling and the shared-space projection.

Normalisation is GroupNorm (8 groups), not BatchNorm: the train state is a pure
dict of `nnx.Param` with gradients on all of it and no mutable collections, so
BatchNorm's running statistics have nowhere to live. GroupNorm learns the same
scale and bias per channel as BatchNorm and needs no batch statistics, so it
also behaves alike in training and evaluation and under any batch sharding.
Every channel count is a multiple of 8, so 8 groups always divide it.

Logical axes: block input/output channels are `embed`, expanded (hidden)
channels `mlp`, as in a transformer MLP; the squeeze-and-excitation width can
be small and odd, so it is left unnamed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.layers import (
    ACTIVATIONS,
    ONES,
    ZEROS,
    check_remat,
    init,
    projection,
    run_blocks,
)

KINDS = ("efficientnet",)
DIVISOR = 8  # channel counts are rounded to multiples of this
GROUPS = 8  # GroupNorm groups
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True)
class Stage:
    kernel: int
    repeats: int  # blocks at depth coefficient 1
    filters: int  # output channels at width coefficient 1
    expand: int  # hidden channels = input channels * expand
    stride: int  # of the stage's first block; the others have stride 1


B0_STAGES = (
    Stage(kernel=3, repeats=1, filters=16, expand=1, stride=1),
    Stage(kernel=3, repeats=2, filters=24, expand=6, stride=2),
    Stage(kernel=5, repeats=2, filters=40, expand=6, stride=2),
    Stage(kernel=3, repeats=3, filters=80, expand=6, stride=2),
    Stage(kernel=5, repeats=3, filters=112, expand=6, stride=1),
    Stage(kernel=5, repeats=4, filters=192, expand=6, stride=2),
    Stage(kernel=3, repeats=1, filters=320, expand=6, stride=1),
)

# He init over fan-out, as the reference; the depthwise kernel `(k, k, 1, C)` uses its
# fan-in `k * k`, which is what the reference's fan-out of `(k, k, C, 1)` amounts to.
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
DEPTHWISE_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def round_filters(filters: int, width_coefficient: float, divisor: int = DIVISOR) -> int:
    """`filters * width_coefficient` to the nearest multiple of `divisor`, never more
    than 10% below it (EfficientNet's rule)."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    return math.ceil(depth_coefficient * repeats)


def _conv(cin, cout, kernel, stride, names, *, groups=1, kernel_init=CONV_INIT, **kw) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding="SAME",
        feature_group_count=groups,
        use_bias=False,
        kernel_init=init(kernel_init, names),
        **kw,
    )


def _norm(channels: int, name: str | None, *, dtype, param_dtype, rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        channels,
        num_groups=GROUPS,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        scale_init=init(ONES, (name,)),
        bias_init=init(ZEROS, (name,)),
    )


class SqueezeExcite(nnx.Module):
    """Channel gates from the pooled feature map: reduce, act, expand, sigmoid."""

    def __init__(self, channels: int, squeeze: int, act, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = act
        self.reduce = nnx.Linear(
            channels,
            squeeze,
            kernel_init=init(CONV_INIT, ("mlp", None)),
            bias_init=init(ZEROS, (None,)),
            **kw,
        )
        self.expand = nnx.Linear(
            squeeze,
            channels,
            kernel_init=init(CONV_INIT, (None, "mlp")),
            bias_init=init(ZEROS, ("mlp",)),
            **kw,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = x.mean(axis=(1, 2))
        gates = jax.nn.sigmoid(self.expand(self.act(self.reduce(pooled))))
        return x * gates[:, None, None, :]


class MBConv(nnx.Module):
    """Inverted bottleneck: (1x1 expand), depthwise k x k, (SE), 1x1 project, residual
    when the shape is kept."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        expand: int,
        se_ratio: float,
        act,
        *,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = cin * expand
        self.act = act
        self.residual = stride == 1 and cin == cout
        if expand != 1:
            self.expand = _conv(cin, hidden, 1, 1, (None, None, "embed", "mlp"), **kw)
            self.expand_norm = _norm(hidden, "mlp", **kw)
        else:
            self.expand = self.expand_norm = None
        self.depthwise = _conv(
            hidden,
            hidden,
            kernel,
            stride,
            (None, None, None, "mlp"),
            groups=hidden,
            kernel_init=DEPTHWISE_INIT,
            **kw,
        )
        self.depthwise_norm = _norm(hidden, "mlp", **kw)
        # The squeeze width follows the block's input channels, as in the reference.
        squeeze = max(1, int(cin * se_ratio))
        self.se = SqueezeExcite(hidden, squeeze, act, **kw) if se_ratio > 0 else None
        self.project = _conv(hidden, cout, 1, 1, (None, None, "mlp", "embed"), **kw)
        self.project_norm = _norm(cout, "embed", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.expand is not None:
            h = self.act(self.expand_norm(self.expand(h)))
        h = self.act(self.depthwise_norm(self.depthwise(h)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_norm(self.project(h))
        return x + h if self.residual else h


class EfficientNet(nnx.Module):
    """Stem, scaled MBConv stages, head conv, global average pool, projection.

    `cfg` (the `model.image` group): `kind="efficientnet"`, `width_coefficient`,
    `depth_coefficient`, `se_ratio` (0 drops squeeze-and-excitation), `act`.
    `scan` is ignored: the stages have different shapes. `remat` applies per block.
    Inputs are float images `[B, H, W, 3]`.
    """

    def __init__(
        self, cfg, embed_dim: int, *, scan: bool, remat: str, dtype, param_dtype, rngs: nnx.Rngs
    ):
        del scan  # stages differ in shape, so there is nothing to stack
        _check(cfg, remat)
        width, depth = cfg.width_coefficient, cfg.depth_coefficient
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[cfg.act]
        self.remat = remat
        self.dtype = dtype
        cin = round_filters(STEM_FILTERS, width)
        self.stem = _conv(3, cin, 3, 2, (None, None, None, "embed"), **kw)
        self.stem_norm = _norm(cin, "embed", **kw)
        blocks = []
        for stage in B0_STAGES:
            cout = round_filters(stage.filters, width)
            for i in range(round_repeats(stage.repeats, depth)):
                stride = stage.stride if i == 0 else 1
                blocks.append(
                    MBConv(
                        cin, cout, stage.kernel, stride, stage.expand, cfg.se_ratio, self.act, **kw
                    )
                )
                cin = cout
        self.blocks = nnx.List(blocks)
        head = round_filters(HEAD_FILTERS, width)
        self.head = _conv(cin, head, 1, 1, (None, None, None, "embed"), **kw)
        self.head_norm = _norm(head, "embed", **kw)
        self.proj = projection(head, embed_dim, **kw)

    def features(self, images: jax.Array) -> jax.Array:
        """The pooled backbone output before the projection: `[B, head channels]`."""
        x = self.act(self.stem_norm(self.stem(images.astype(self.dtype))))
        x = run_blocks(self.blocks, x, remat=self.remat)
        x = self.act(self.head_norm(self.head(x)))
        return x.astype(jnp.float32).mean(axis=(1, 2)).astype(x.dtype)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.proj(self.features(images))


def _check(cfg, remat: str) -> None:
    kind = cfg.get("kind", "efficientnet")
    if kind not in KINDS:
        raise ValueError(f"image.kind={kind!r} is not an EfficientNet; expected one of {KINDS}")
    check_remat(remat)
    if cfg.act not in ACTIVATIONS:
        raise ValueError(f"image.act={cfg.act!r} is unknown; expected one of {sorted(ACTIVATIONS)}")
    for field in ("width_coefficient", "depth_coefficient"):
        if not cfg[field] > 0:
            raise ValueError(f"image.{field}={cfg[field]!r} must be positive")
    if not 0 <= cfg.se_ratio <= 1:
        raise ValueError(f"image.se_ratio={cfg.se_ratio!r} must be in [0, 1] (0: no SE)")
