"""Shared by the benchmarks: bench-only model sizes and the clipjax train step on
synthetic batches (random uint8 images and token ids already on the devices, so
only the step is timed)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clipjax.host_memory import reexec_with_hugepages

# Measure clipjax as the `clipjax` command runs it: with huge-page malloc.
reexec_with_hugepages(sys.argv)

# ViT-S/16-like towers for CPU benchmarks: 12 + 12 blocks of width 384 (6 heads),
# GELU, class token, ln_pre, bias-free patch embedding (the open_clip ViT layout).
SMALL_TOWERS = {
    "vit_s16": dict(
        embed_dim=384,
        image=dict(patch_size=16, width=384, depth=12, heads=6),
        text=dict(width=384, depth=12, heads=6),
    ),
}


def bench_config(
    size: str, image_size: int, dtype: str = "float32", remat: str = "none", scan: bool = False
):
    """The clipjax config for `size` (a published CLIP size or one of SMALL_TOWERS)."""
    from clipjax.models.presets import CLIP_SIZES, clip_config

    config = clip_config(size if size in CLIP_SIZES else "vit_b16")
    with config.unlocked():
        if size in SMALL_TOWERS:
            towers = SMALL_TOWERS[size]
            config.model.embed_dim = towers["embed_dim"]
            config.model.image.update(towers["image"])
            config.model.text.update(towers["text"])
            config.model.image.act = config.model.text.act = "gelu"
        elif size not in CLIP_SIZES:
            raise ValueError(
                f"unknown size {size!r}; expected {sorted(CLIP_SIZES)} or {sorted(SMALL_TOWERS)}"
            )
        config.model.image.image_size = config.data.image_size = image_size
        config.model.dtype = dtype
        config.model.remat = remat
        config.model.scan_layers = scan
        config.mesh = {"data": -1, "fsdp": 1, "tensor": 1}
    return config


def clipjax_step(config, batch_size: int, devices=None):
    """`(step, state, batch)`: the project's jitted train step (`train.program`, as
    `clipjax train` builds it: AdamW, the config's loss, uint8 normalisation inside) with
    a synthetic batch placed on `devices`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from clipjax.parallel import build_mesh
    from clipjax.train.program import build_step_program

    program = build_step_program(config, build_mesh(config.mesh, devices))
    state, shardings = program.plan.init(), program.batch_shardings
    rng = np.random.default_rng(0)
    size, context = config.model.image.image_size, config.model.text.context_length
    text = rng.integers(1, config.model.text.vocab_size - 1, (batch_size, context))
    text[:, -1] = config.model.text.vocab_size - 1  # the end token pools (argmax)
    batch = {
        "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
        "text": text.astype(np.int32),
    }
    batch = {k: jax.device_put(jnp.asarray(v), shardings[k]) for k, v in batch.items()}
    return program.step, state, batch


def time_steps(step, state, batch, steps: int, warmup: int = 2):
    """Seconds per step (median-free: total over `steps` after `warmup` steps), and
    the state after, so the donated input is never reused."""
    import jax

    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, state
