"""Symile on the synthetic XOR task: a, b random bits, c = a XOR b, in noise.

    uv run clipjax train --config=configs/symile/xor.py            # Symile's loss
    uv run clipjax train --config=configs/symile/xor.py:pairwise   # the pairwise-CLIP baseline
    uv run clipjax train --config=configs/symile/xor.py:tiny       # a few steps

c is independent of a alone and of b alone, so pairwise CLIP cannot predict it;
Symile's multilinear inner product scores the three jointly (Saporta et al. 2024).
Each modality has its own MLP tower; there are no image or text towers here.
"""

import ml_collections

from clipjax.config import DEFAULT_CONFIG, load_config


def tower(bits: int, width: int, depth: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(kind="mlp", input_dim=bits, width=width, depth=depth))


def get_config(arg=None):
    if arg not in (None, "tiny", "pairwise"):
        raise ValueError(
            f"configs/symile/xor.py has no variant {arg!r}; expected 'tiny' or 'pairwise'"
        )
    config = load_config(str(DEFAULT_CONFIG))
    with config.unlocked():
        bits = 5
        config.data.source = "xor"
        config.data.xor_bits = bits
        config.data.xor_noise = 0.2
        config.model.name = "symile"
        config.model.embed_dim = 64
        config.model.temperature_init = 0.07
        config.model.modalities = ml_collections.ConfigDict(
            {name: tower(bits, 128, 2) for name in ("a", "b", "c")}
        )
        del config.model["image"], config.model["text"], config["tokenizer"]
        del config.model["attention"]  # MLP towers: no attention layers
        # only the XOR task's fields and Symile's loss fields apply
        for field in [k for k in config.data if k not in ("source", "xor_bits", "xor_noise")]:
            del config.data[field]
        for field in [k for k in config.loss if k != "kind"]:
            del config.loss[field]
        if arg != "pairwise":
            config.loss.symile_negatives = "n"  # n: one permutation per modality | n_squared
        config.loss.kind = "pairwise" if arg == "pairwise" else "symile"
        config.train.batch_size = 128
        config.train.steps = 500
        config.train.log_every = 50
        config.optim.lr = 3e-3
        config.optim.warmup_steps = 20
        config.evals = ml_collections.ConfigDict()
        if arg == "tiny":
            config.train.steps = 8
            config.train.batch_size = 32
            config.train.log_every = 4
            config.optim.warmup_steps = 2
            for name in ("a", "b", "c"):
                config.model.modalities[name] = tower(bits, 64, 1)
    return config
