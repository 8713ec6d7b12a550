"""Model FLOPs of a CLIP train step, counted from the architecture, and device peaks.

Only matrix multiplications are counted (a multiply-add is 2 FLOPs); layer norms,
activations, softmax and the optimizer's elementwise work are left out, as in
the usual MFU definition (PaLM, appendix B). Per example, forward pass:

- transformer block over n tokens of width d with MLP width h:
  `2 n (4 d^2 + 2 d h)` for the q/k/v/out projections and the MLP, plus
  `4 n^2 d` for the attention scores and the weighted sum (causal attention is
  counted in full: XLA computes the whole n x n matrix);
- image tower: patch embedding `2 P (p^2 * 3) d` over P patches, n = P (+1 with
  a class token), then depth blocks, then the projection `2 d e`; in training with
  FLIP's masking only the kept patches enter the blocks;
- text tower: the token lookup is free, n = context length, then the projection;
- loss: the B x B similarity matrix, `2 B e` per example.

A train step is 3x the forward pass (the backward pass costs twice the forward).
Rematerialisation is not counted: MFU measures useful work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import jax

from clipjax.models.layers import mlp_width as hidden_width
from clipjax.models.text import kept_tokens
from clipjax.models.vit import kept_patches


def block_flops(tokens: int, width: int, mlp_width: int) -> int:
    dense = 2 * tokens * (4 * width * width + 2 * width * mlp_width)
    return dense + 4 * tokens * tokens * width


def image_tower_flops(image, embed_dim: int, train: bool = False) -> int:
    """Forward FLOPs of a ViT tower; in training (`train`) only the patches that FLIP's
    masking keeps (`model.image.patch_dropout`) enter the encoder."""
    patches = (image.image_size // image.patch_size) ** 2
    encoded = patches
    if train and image.get("patch_dropout", 0.0):
        encoded = kept_patches(patches, image.patch_dropout)
    tokens = encoded + (image.pool == "cls")
    mlp = hidden_width(image.width, image.mlp_ratio)
    patch_embed = 2 * patches * image.patch_size**2 * 3 * image.width
    blocks = image.depth * block_flops(tokens, image.width, mlp)
    return patch_embed + blocks + 2 * image.width * embed_dim


def text_tower_flops(text, embed_dim: int, train: bool = False) -> int:
    """Forward FLOPs of the text tower; in training only the positions FLIP's text
    masking keeps (`model.text.token_dropout`) enter the encoder."""
    mlp = hidden_width(text.width, text.mlp_ratio)
    tokens = text.context_length
    if train and text.get("token_dropout", 0.0):
        tokens = kept_tokens(tokens, text.token_dropout)
    blocks = text.depth * block_flops(tokens, text.width, mlp)
    return blocks + 2 * text.width * embed_dim


def forward_flops_per_example(model_cfg, batch_size: int, train: bool = False) -> int:
    """Forward FLOPs per example of both towers and the similarity matrix (`train`:
    with the patch masking of training)."""
    e = model_cfg.embed_dim
    image = image_tower_flops(model_cfg.image, e, train)
    return image + text_tower_flops(model_cfg.text, e, train) + 2 * batch_size * e


def counts_model(model_cfg) -> bool:
    """Whether these formulas describe the model: CLIP-style ViT + text towers."""
    return model_cfg.name == "clip" and model_cfg.image.kind == "vit"


def train_flops_per_example(model_cfg, batch_size: int) -> int:
    return 3 * forward_flops_per_example(model_cfg, batch_size, train=True)


# Dense peak FLOP/s per chip from the vendors' data sheets: (bf16, fp32).
ACCELERATOR_PEAKS = {
    "H100": (989e12, 67e12),  # SXM; bf16 tensor cores without sparsity
    "H200": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L4": (121e12, 30e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5e": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v5": (459e12, 459e12 / 2),  # v5p's device kind
    "TPU v6 lite": (918e12, 918e12 / 2),
}


@dataclass(frozen=True)
class Peak:
    flops_per_s: float
    source: str  # how the number was obtained, for the report


def cpu_peak(cores: int | None = None) -> Peak:
    """An estimate for x86 CPUs: cores x clock x float32 FLOPs per cycle, 32 with
    AVX2+FMA (two 256-bit FMA pipes) and 64 with AVX-512 on Intel (two 512-bit
    pipes). AMD's Zen 4 runs AVX-512 on 256-bit pipes, so it stays at 32."""
    info = Path("/proc/cpuinfo").read_text()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line and line.strip())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    mhz = float(fields.get("cpu MHz", "0") or 0)
    if not mhz or "fma" not in flags:
        raise RuntimeError("cannot estimate this CPU's peak; pass --peak-tflops")
    wide = "avx512f" in flags and fields.get("vendor_id") == "GenuineIntel"
    per_cycle = 64 if wide else 32
    cores = cores or len(os.sched_getaffinity(0))
    source = f"{cores} cores x {mhz / 1e3:.2f} GHz x {per_cycle} fp32 FLOP/cycle (estimate)"
    return Peak(cores * mhz * 1e6 * per_cycle, source)


def device_peak(device: jax.Device, dtype: str) -> Peak:
    """The peak of one `device` for `dtype` compute ("bfloat16" or "float32")."""
    if device.platform == "cpu":
        return cpu_peak()
    kind = device.device_kind
    exact = [(kind, ACCELERATOR_PEAKS[kind])] if kind in ACCELERATOR_PEAKS else []
    for name, (bf16, fp32) in exact or ACCELERATOR_PEAKS.items():
        if name in kind:
            flops = bf16 if dtype == "bfloat16" else fp32
            return Peak(flops, f"{kind} data sheet, {dtype}")
    raise RuntimeError(f"no peak FLOP/s known for device kind {kind!r}; pass --peak-tflops")
