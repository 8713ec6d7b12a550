"""Transformer building blocks with logical axis names on every parameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from clipjax.models.attention import attend
from clipjax.parallel import constrain_to_batch

Names = tuple[str | None, ...]


def init(initializer, names: Names):
    """An initializer whose parameters carry logical axis `names`."""
    return nnx.with_partitioning(initializer, names)


def param(rngs: nnx.Rngs, initializer, shape: Sequence[int], names: Names, dtype) -> nnx.Param:
    return nnx.Param(init(initializer, names)(rngs.params(), tuple(shape), dtype))


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,  # EfficientNet's name for silu
}

ZEROS = nnx.initializers.zeros_init()
ONES = nnx.initializers.ones_init()


LAYER_NORM_EPS = 1e-5  # a tower's `ln_eps` field changes it (SigLIP: 1e-6)


def layer_norm(width: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        width,
        epsilon=LAYER_NORM_EPS,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        scale_init=init(ONES, ("embed",)),
        bias_init=init(ZEROS, ("embed",)),
    )


def projection(
    width: int, embed_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs, bias: bool = False
) -> nnx.Linear:
    """A tower's projection into the shared embedding space (bias-free unless `bias`)."""
    return nnx.Linear(
        width,
        embed_dim,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        kernel_init=init(nnx.initializers.normal(width**-0.5), ("embed", None)),
        bias_init=init(ZEROS, (None,)),
    )


# A tower's `projection` field: into the embedding space without or with a bias
# (SigLIP's text head), or none (SigLIP's image tower: its MAP head's output is the
# embedding, so embed_dim must equal the width).
PROJECTIONS = ("linear", "linear_bias", "none")


def tower_projection(kind: str, width: int, embed_dim: int, **kw) -> nnx.Linear | None:
    if kind not in PROJECTIONS:
        raise ValueError(f"projection={kind!r} is unknown; expected one of {PROJECTIONS}")
    if kind == "none":
        if width != embed_dim:
            raise ValueError(f"projection='none' needs embed_dim={embed_dim} == width={width}")
        return None
    return projection(width, embed_dim, bias=kind == "linear_bias", **kw)


def set_layer_norm_eps(module: nnx.Module, eps: float) -> None:
    """Every LayerNorm in `module` with epsilon `eps` (SigLIP's towers use 1e-6)."""
    for _, sub in nnx.iter_graph(module):
        if isinstance(sub, nnx.LayerNorm):
            sub.epsilon = eps


class Attention(nnx.Module):
    """Multi-head self-attention; kernels are `(embed, heads, kv)` and `(heads, kv, embed)`.
    `implementation` names the kernel (`clipjax.models.attention`); `build_model` sets
    it from `model.attention` for the devices the model runs on."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.implementation = "xla"
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        head_dim = width // heads
        xavier = nnx.initializers.xavier_uniform()  # LinearGeneral inits the flattened 2-D kernel

        def projection() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(
                width,
                (heads, head_dim),
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
                kernel_init=init(xavier, ("embed", "heads", "kv")),
                bias_init=init(ZEROS, ("heads", "kv")),
            )

        self.query, self.key, self.value = projection(), projection(), projection()
        self.out = nnx.LinearGeneral(
            (heads, head_dim),
            width,
            axis=(-2, -1),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_init=init(xavier, ("heads", "kv", "embed")),
            bias_init=init(ZEROS, ("embed",)),
        )

    def __call__(
        self,
        x: jax.Array,
        causal: bool = False,
        mask: jax.Array | None = None,
        context: jax.Array | None = None,
    ) -> jax.Array:
        """Self-attention over `x`, or cross-attention from `x` to `context`.

        `mask`: boolean, broadcastable to `[batch, heads, queries, keys]`; True attends.
        """
        source = x if context is None else context
        q, k, v = self.query(x), self.key(source), self.value(source)
        attended = attend(q, k, v, mask=mask, causal=causal, implementation=self.implementation)
        return self.out(attended)


class Mlp(nnx.Module):
    def __init__(self, width: int, hidden: int, act: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        if act not in ACTIVATIONS:
            raise ValueError(
                f"activation {act!r} is unknown; expected one of {sorted(ACTIVATIONS)}"
            )
        kernel = nnx.initializers.xavier_uniform()
        self.act = ACTIVATIONS[act]
        self.fc1 = nnx.Linear(
            width,
            hidden,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_init=init(kernel, ("embed", "mlp")),
            bias_init=init(ZEROS, ("mlp",)),
        )
        self.fc2 = nnx.Linear(
            hidden,
            width,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            kernel_init=init(kernel, ("mlp", "embed")),
            bias_init=init(ZEROS, ("embed",)),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


def mlp_width(width: int, mlp_ratio: float) -> int:
    """`int(width * mlp_ratio)`, robust to a ratio like 37/16 that floats store a hair low."""
    return int(width * mlp_ratio + 1e-6)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        *,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln_1 = layer_norm(width, **kw)
        self.attn = Attention(width, heads, **kw)
        self.ln_2 = layer_norm(width, **kw)
        self.mlp = Mlp(width, mlp_width(width, mlp_ratio), act, **kw)

    def __call__(
        self, x: jax.Array, causal: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        x = x + self.attn(self.ln_1(x), causal=causal, mask=mask)
        return x + self.mlp(self.ln_2(x))


class AttentionalPooler(nnx.Module):
    """`queries` learned queries cross-attending to a token sequence, then LayerNorm."""

    def __init__(self, width: int, queries: int, heads: int, *, dtype, param_dtype, rngs):
        if queries < 1:
            raise ValueError(f"an attentional pooler needs at least 1 query, got {queries}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        normal = nnx.initializers.normal(width**-0.5)
        self.queries = param(rngs, normal, (queries, width), (None, "embed"), param_dtype)
        self.attn = Attention(width, heads, **kw)
        self.ln = layer_norm(width, **kw)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """`[B, T, width] -> [B, queries, width]`."""
        queries = self.queries[...].astype(tokens.dtype)
        queries = jnp.broadcast_to(queries, (tokens.shape[0], *queries.shape))
        return self.ln(self.attn(queries, context=tokens))


class MapHead(nnx.Module):
    """Multihead attention pooling (big_vision's MAP head): one learned probe attends
    over the tokens, then a residual MLP on its LayerNorm: `[B, T, w] -> [B, w]`."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, act: str, *, dtype, param_dtype, rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        normal = nnx.initializers.normal(width**-0.5)
        self.probe = param(rngs, normal, (1, width), (None, "embed"), param_dtype)
        self.attn = Attention(width, heads, **kw)
        self.ln = layer_norm(width, **kw)
        self.mlp = Mlp(width, mlp_width(width, mlp_ratio), act, **kw)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(
            self.probe[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1])
        )
        x = self.attn(probe, context=tokens)
        return (x + self.mlp(self.ln(x)))[:, 0]


REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is unknown; expected one of {sorted(REMAT_POLICIES)}")


def stack_blocks(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, *, scan: bool, rngs):
    """`depth` blocks from `make_block(rngs)`: an `nnx.List` (unrolled) or, with `scan`,
    one block whose parameters are stacked on a leading `layers` axis."""
    if scan and depth:
        stack = nnx.vmap(
            make_block, in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"}
        )
        return nnx.split_rngs(splits=depth)(stack)(rngs)
    return nnx.List([make_block(rngs) for _ in range(depth)])


def run_blocks(blocks: nnx.Module, x: jax.Array, *args, remat: str = "none", **kwargs):
    """`x` through `blocks` from `stack_blocks`, each called as `block(x, *args, **kwargs)`:
    a loop over a list, `nnx.scan` over stacked blocks (one compiled block however deep);
    `remat` rematerialises each block in the backward pass."""

    def apply(block: nnx.Module, x: jax.Array) -> jax.Array:
        return constrain_to_batch(block(x, *args, **kwargs))

    if remat != "none":
        apply = nnx.remat(apply, policy=REMAT_POLICIES[remat])
    x = constrain_to_batch(x)
    if isinstance(blocks, nnx.List):
        for block in blocks:
            x = apply(block, x)
        return x
    scanned = nnx.scan(
        lambda x, block: apply(block, x),
        in_axes=(nnx.Carry, 0),
        out_axes=nnx.Carry,
        transform_metadata={nnx.PARTITION_NAME: "layers"},
    )
    return scanned(x, blocks)


class Transformer(nnx.Module):
    """`depth` pre-LN blocks, unrolled or scanned (`stack_blocks`), optionally
    rematerialised."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        *,
        scan: bool = False,
        remat: str = "none",
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        check_remat(remat)
        self.remat = remat

        def block(rngs: nnx.Rngs) -> Block:
            return Block(
                width, heads, mlp_ratio, act, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.blocks = stack_blocks(block, depth, scan=scan, rngs=rngs)

    def __call__(
        self, x: jax.Array, causal: bool = False, mask: jax.Array | None = None
    ) -> jax.Array:
        """`mask`: boolean `[batch, 1, queries, keys]` (True attends), e.g. key padding."""
        return run_blocks(self.blocks, x, remat=self.remat, causal=causal, mask=mask)


def dtype_of(name: str) -> jnp.dtype:
    try:
        return jnp.dtype(name)
    except TypeError as exc:
        raise ValueError(f"unknown dtype {name!r}; expected e.g. 'float32' or 'bfloat16'") from exc
