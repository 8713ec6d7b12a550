"""Which kernel computes attention (`model.attention`), and the Pallas flash kernel's
adapter: padding to its block sizes, masks as segment ids or a bias, and a shard_map
over the step's batch (and heads) axes, since XLA cannot partition a Mosaic kernel.

- "xla": `jax.nn.dot_product_attention`'s XLA implementation, on every backend;
- "cudnn": its cuDNN fused kernel (GPUs, bf16 or fp16 compute);
- "flash": the TPU flash attention kernel of jax's own Pallas ops
  (`jax.experimental.pallas.ops.tpu.flash_attention`);
- "auto": "flash" on TPU, "xla" elsewhere. Not cuDNN on GPUs: tracing its kernel needs
  the cuDNN library, which `clipjax compile --topology=h100x8` on a machine without
  CUDA's libraries lacks ("cuDNN not found"); choose "cudnn" on a GPU machine.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clipjax.config import ConfigError
from clipjax.parallel import step_partitioning

ATTENTION_CHOICES = ("xla", "cudnn", "flash", "auto")
_HALF = ("bfloat16", "float16")
# One block covers a whole sequence up to this length (ViT-L/14 at 224 px: 257 tokens);
# longer ones are split into 128-token blocks. The kernel's key blocks are multiples of
# 128 tokens, so keys are padded to one: ViT-B/16's 197 tokens to 256 (masked out).
SINGLE_BLOCK_TOKENS = 512
KEY_MULTIPLE = 128


def resolve_attention(choice: str, platform: str, dtype: str) -> str:
    """The implementation `choice` means on `platform` ("cpu", "gpu"/"cuda", "tpu") for
    compute in `dtype`; a choice the platform cannot run raises ConfigError (a
    ValueError): `clipjax train` prints it and exits 2."""
    if choice not in ATTENTION_CHOICES:
        raise ConfigError(f"model.attention={choice!r} is not one of {ATTENTION_CHOICES}")
    gpu = platform in ("gpu", "cuda", "rocm")
    if choice == "auto":
        return "flash" if platform == "tpu" else "xla"
    if choice == "flash" and platform != "tpu":
        raise ConfigError(
            f"model.attention='flash' is a TPU kernel; these devices are {platform!r}: "
            "use 'xla' or 'auto'"
        )
    if choice == "cudnn" and not (gpu and dtype in _HALF):
        raise ConfigError(
            f"model.attention='cudnn' needs GPUs and model.dtype in {_HALF}; got "
            f"{platform!r} devices and model.dtype={dtype!r}: use 'xla' or 'auto'"
        )
    return choice


def attend(q, k, v, *, mask=None, causal: bool = False, implementation: str = "xla"):
    """Attention of `q` `[B, Tq, H, D]` over `k`, `v` `[B, Tk, H, D]`; `mask` is boolean,
    broadcastable to `[B, H, Tq, Tk]`, True attends."""
    if implementation == "flash":
        return _sharded_flash(q, k, v, mask, causal)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )


def padded_length(tokens: int, keys: bool) -> int:
    """The sequence length the kernel runs at: keys a multiple of 128, queries of 8
    (one block) or, past one block, of 128."""
    multiple = KEY_MULTIPLE if keys or tokens > SINGLE_BLOCK_TOKENS else 8
    return multiple * math.ceil(tokens / multiple)


def _blocks(q_len: int, k_len: int):
    from jax.experimental.pallas.ops.tpu.flash_attention import BlockSizes

    bq = 128 if q_len > SINGLE_BLOCK_TOKENS else q_len
    bk = 128 if k_len > SINGLE_BLOCK_TOKENS else k_len
    return BlockSizes(
        block_q=bq,
        block_k_major=bk,
        block_k=bk,
        block_b=1,
        block_q_major_dkv=bq,
        block_k_major_dkv=bk,
        block_k_dkv=bk,
        block_q_dkv=bq,
        block_k_major_dq=bk,
        block_k_dq=bk,
        block_q_dq=bq,
    )


def flash(q, k, v, mask=None, causal: bool = False):
    """The Pallas kernel on one device's shard. Key padding (`mask` `[B, 1, 1, Tk]`) and
    the padded tail become segment ids; any other mask an additive bias."""
    from jax.experimental.pallas.ops.tpu.flash_attention import (
        DEFAULT_MASK_VALUE,
        SegmentIds,
        flash_attention,
    )

    b, tq, heads, d = q.shape
    tk = k.shape[1]
    pq, pk = padded_length(tq, keys=False), padded_length(tk, keys=True)

    def to_kernel(x, length):  # [B, T, H, D] -> [B, H, T', D], zero-padded
        return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).swapaxes(1, 2)

    keys = jnp.arange(pk) < tk
    bias = None
    if mask is not None and mask.shape[1] == 1 and mask.shape[2] == 1:
        keys = keys & jnp.pad(mask[:, 0, 0, :], ((0, 0), (0, pk - tk)))
    elif mask is not None:
        full = jnp.broadcast_to(mask, (b, heads, tq, tk))
        full = jnp.pad(full, ((0, 0), (0, 0), (0, pq - tq), (0, pk - tk)), constant_values=True)
        bias = jax.lax.stop_gradient(jnp.where(full, 0.0, DEFAULT_MASK_VALUE).astype(q.dtype))
    segments = SegmentIds(
        q=jnp.ones((b, pq), jnp.int32),
        kv=jnp.broadcast_to(keys, (b, pk)).astype(jnp.int32),
    )
    out = flash_attention(
        to_kernel(q, pq),
        to_kernel(k, pk),
        to_kernel(v, pk),
        ab=bias,
        segment_ids=segments,
        causal=causal,
        sm_scale=d**-0.5,
        block_sizes=_blocks(pq, pk),
    )
    return out.swapaxes(1, 2)[:, :tq]


def _sharded_flash(q, k, v, mask, causal: bool):
    """Inside a train step, one kernel per device on its rows (and heads); outside
    (evals, export), on the arrays as given."""
    active = step_partitioning()
    if active is None:
        return flash(q, k, v, mask, causal)
    mesh, batch, heads = active
    rows = P(batch, None, heads, None)
    arrays, specs = [q, k, v], [rows, rows, rows]
    if mask is not None:  # per example: its rows go with them
        arrays.append(jnp.broadcast_to(mask, (q.shape[0], *mask.shape[1:])))
        specs.append(P(batch, None, None, None))
    return jax.shard_map(
        lambda q, k, v, m=None: flash(q, k, v, m, causal),
        mesh=mesh,
        in_specs=tuple(specs),
        out_specs=rows,
        check_vma=False,
    )(*arrays)
