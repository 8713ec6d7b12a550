"""Reading PyTorch-style state dicts into NumPy arrays without running pickled code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAFETENSORS = (".safetensors",)
TORCH_FILES = (".bin", ".pt", ".pth")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """`name -> array` from a `.safetensors` file, or a `.bin`/`.pt`/`.pth` file read
    with `torch.load(weights_only=True)` (plain tensors only, never full pickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a state dict file)")
    if path.suffix in SAFETENSORS:
        import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy for safetensors)
        from safetensors.numpy import load_file

        return {k: _widen(v) for k, v in load_file(str(path)).items()}
    if path.suffix in TORCH_FILES:
        return _read_torch(path)
    raise ValueError(
        f"{path}: unknown state dict format {path.suffix!r}; expected one of "
        f"{SAFETENSORS + TORCH_FILES}"
    )


def _widen(array: np.ndarray) -> np.ndarray:
    """bfloat16 -> float32 (exact); other dtypes unchanged."""
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install torch); safetensors files do not"
        ) from exc
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(
            f"{path} is not a plain state dict that torch.load(weights_only=True) accepts "
            f"(OpenAI's TorchScript archives are not; load them with open_clip and save "
            f"model.state_dict()): {exc}"
        ) from exc
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]  # open_clip training checkpoints
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    out = {}
    for name, tensor in loaded.items():
        name = name.removeprefix("module.")  # saved from DistributedDataParallel
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = tensor.detach().cpu().numpy()
    return out
