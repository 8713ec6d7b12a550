"""What HF transformers' CLIP and SigLIP checkpoints share: torch tensor layouts and
their clipjax counterparts, the encoder-layer names, activations and weight files.

Each conversion is a pair (to clipjax, to HF). Torch `Linear` weights are `[out, in]`;
clipjax keeps `[in, out]` kernels and splits attention projections into
`(heads, head_dim)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
CLIPJAX_TO_HF_ACT = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_tanh": "gelu_new",
    "relu": "relu",
}


def contiguous(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, order="C")  # np.ascontiguousarray would turn a scalar into [1]


def linear(w: np.ndarray) -> np.ndarray:
    return contiguous(w.T)


def qkv_kernel(heads: int):
    def to_jax(w):  # [out=H*D, in=W] -> [W, H, D]
        return contiguous(w.T.reshape(w.shape[1], heads, -1))

    def to_hf(k):  # [W, H, D] -> [H*D, W]
        return contiguous(k.reshape(k.shape[0], -1).T)

    return to_jax, to_hf


def qkv_bias(heads: int):
    return (lambda b: b.reshape(heads, -1)), (lambda b: b.reshape(-1))


def out_kernel(heads: int):
    def to_jax(w):  # [out=W, in=H*D] -> [H, D, W]
        return contiguous(w.T.reshape(heads, -1, w.shape[0]))

    def to_hf(k):  # [H, D, W] -> [W, H*D]
        return contiguous(k.reshape(-1, k.shape[-1]).T)

    return to_jax, to_hf


COPY = (lambda x: x, lambda x: x)
LINEAR = (linear, linear)
CONV = (  # torch OIHW <-> flax HWIO
    lambda w: contiguous(w.transpose(2, 3, 1, 0)),
    lambda k: contiguous(k.transpose(3, 2, 0, 1)),
)


def block_table(heads: int) -> list[tuple[str, str, tuple]]:
    qkv_k, qkv_b, out_k = qkv_kernel(heads), qkv_bias(heads), out_kernel(heads)
    table = [
        ("ln_1/scale", "layer_norm1.weight", COPY),
        ("ln_1/bias", "layer_norm1.bias", COPY),
        ("ln_2/scale", "layer_norm2.weight", COPY),
        ("ln_2/bias", "layer_norm2.bias", COPY),
        ("attn/out/kernel", "self_attn.out_proj.weight", out_k),
        ("attn/out/bias", "self_attn.out_proj.bias", COPY),
        ("mlp/fc1/kernel", "mlp.fc1.weight", LINEAR),
        ("mlp/fc1/bias", "mlp.fc1.bias", COPY),
        ("mlp/fc2/kernel", "mlp.fc2.weight", LINEAR),
        ("mlp/fc2/bias", "mlp.fc2.bias", COPY),
    ]
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        table.append((f"attn/{ours}/kernel", f"self_attn.{theirs}.weight", qkv_k))
        table.append((f"attn/{ours}/bias", f"self_attn.{theirs}.bias", qkv_b))
    return table


def encoder_table(model_cfg, towers: dict[str, str]) -> list[tuple[str, str, tuple]]:
    """The (clipjax, HF, conversions) rows of every encoder layer of `towers`
    (clipjax tower name -> HF prefix, e.g. "image" -> "vision_model")."""
    table = []
    for tower, prefix in towers.items():
        cfg = model_cfg[tower]
        for layer in range(cfg.depth):
            for ours, theirs, convert in block_table(cfg.heads):
                table.append(
                    (
                        f"{tower}/encoder/blocks/{layer}/{ours}",
                        f"{prefix}.encoder.layers.{layer}.{theirs}",
                        convert,
                    )
                )
    return table


def act(name: str, where: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(
            f"{where}.hidden_act={name!r} has no clipjax equivalent; "
            f"expected one of {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    if list(directory.glob("model-*-of-*.safetensors")):
        raise ValueError(
            f"{directory}: sharded safetensors are not supported yet; "
            "merge them into model.safetensors"
        )
    raise FileNotFoundError(f"{directory} has no model.safetensors or pytorch_model.bin")


IGNORED_HF = ("position_ids",)  # buffers some saves include


def from_hf_state(state: dict[str, np.ndarray], table: list, source: str, family: str) -> dict:
    """Unrolled clipjax params from an HF state dict by `table`'s (ours, theirs,
    conversions) rows; a missing or an unused HF tensor is an error naming it."""
    out, used = {}, set()
    for ours, theirs, (to_jax, _) in table:
        if theirs not in state:
            raise ValueError(f"{source} has no {theirs!r} (needed for {ours})")
        out[ours] = np.asarray(to_jax(state[theirs]), np.float32)
        used.add(theirs)
    left = sorted(k for k in set(state) - used if not k.endswith(IGNORED_HF))
    if left:
        raise ValueError(
            f"{source} has weights clipjax's {family} does not use: {left[:8]}"
            + (f" and {len(left) - 8} more" if len(left) > 8 else "")
        )
    return out


def to_hf_state(unrolled: dict[str, np.ndarray], table: list) -> dict[str, np.ndarray]:
    """The inverse of `from_hf_state`."""
    return {
        theirs: contiguous(to_hf(np.asarray(unrolled[ours]))) for ours, theirs, (_, to_hf) in table
    }
