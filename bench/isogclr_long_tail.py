"""iSogCLR's learned temperatures on a long-tailed version of the bundled digits.

    uv run python bench/isogclr_long_tail.py [--imbalance 50] [--steps 600] [--seed 0]

Keeps a fraction imbalance^(-c/9) of digit c's captioned training samples (digit 0
all of them, digit 9 1/imbalance), writes them as shards of 512 (so an example's number
is its position in the written order), and trains the embedded default's CLIP on them
with iSogCLR (`presets.apply_isogclr`) and, for reference, with CLIP's loss. Reports per
digit the number of training samples and the mean learned temperature (image and text
anchors) over its examples, their Spearman correlation with the class frequency, and
the zero-shot accuracy of both runs on the balanced held-out digits. The paper predicts
larger temperatures for frequent semantics and smaller ones for rare ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PER_SHARD = 512


def long_tailed_shards(out: Path, imbalance: float, seed: int) -> list[int]:
    """Writes the long-tailed training shards; returns each written sample's digit."""
    import numpy as np
    import webdataset as wds

    from clipjax.data.writer import build_digits_shards, write_shards

    rng = np.random.default_rng(seed)
    source = build_digits_shards(None).train_urls()
    samples = [s for url in source for s in wds.WebDataset(url, shardshuffle=False)]
    labels = [json.loads(s["json"])["label"] for s in samples]
    kept = [i for i, label in enumerate(labels) if rng.random() < imbalance ** (-label / 9)]
    kept = [kept[i] for i in rng.permutation(len(kept))]
    written = [{k: v for k, v in samples[i].items() if not k.startswith("__url")} for i in kept]
    write_shards(iter(written), out, PER_SHARD)
    return [labels[i] for i in kept]


def learned_temperatures(config, workdir: Path) -> dict:
    import jax
    import numpy as np

    from clipjax.checkpoint import Checkpoints
    from clipjax.parallel import build_mesh, rules_table
    from clipjax.train.optim import build_optimizer
    from clipjax.train.program import example_table
    from clipjax.train.state import plan_train_state, state_as_dict

    mesh = build_mesh(dict(config.mesh), jax.devices())
    rules = rules_table(config.sharding_rules)
    table = example_table(config, mesh, rules.get("batch"))
    tx = build_optimizer(config.optim, config.train.steps)
    plan = plan_train_state(config.model, config.seed, tx, mesh, rules, table)
    checkpoints = Checkpoints(workdir / "checkpoints", every=config.train.steps)
    try:
        state = checkpoints.restore(config.train.steps, state_as_dict(plan.abstract)).state
    finally:
        checkpoints.close()
    return {name: np.asarray(value) for name, value in state["examples"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imbalance", type=float, default=50.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rho", type=float, help="default: rho_for_batch(128)")
    args = parser.parse_args()

    import numpy as np
    from scipy.stats import spearmanr

    from clipjax.config import apply_overrides, load_config
    from clipjax.models.presets import apply_isogclr
    from clipjax.train.loop import train

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        digit_of = np.asarray(long_tailed_shards(root / "shards", args.imbalance, args.seed))
        count = len(list((root / "shards").glob("*.tar")))
        results = {}
        for kind in ("isogclr", "softmax"):
            config = load_config("configs/default.py")
            with config.unlocked():
                if kind == "isogclr":
                    apply_isogclr(config, samples_per_shard=PER_SHARD)
                    if args.rho is not None:
                        config.loss.isogclr.rho = args.rho
                for name in ("digits_retrieval", "digits_probe"):
                    del config.evals[name]
            apply_overrides(
                config,
                [
                    "data.source=shards",
                    f"data.train_shards={root}/shards/{{00000..{count - 1:05d}}}.tar",
                    f"train.steps={args.steps}",
                    f"checkpoint.every={args.steps}",
                    f"seed={args.seed}",
                ],
            )
            result = train(config, root / kind)
            if kind == "isogclr":
                rho = config.loss.isogclr.rho
            results[kind] = result.final_metrics.get("zeroshot/digits/top1", float("nan"))
            if kind == "isogclr":
                tau = learned_temperatures(config, root / kind)
    n = len(digit_of)
    per_digit = []
    for digit in range(10):
        rows = digit_of == digit
        per_digit.append(
            (
                digit,
                int(rows.sum()),
                tau["tau_image"][:n][rows].mean(),
                tau["tau_text"][:n][rows].mean(),
            )
        )
    counts = [row[1] for row in per_digit]
    print(
        f"\nlong-tailed digits: {n} training samples, imbalance {args.imbalance:g}, "
        f"{args.steps} steps of batch 128, rho {rho}\n\n| digit | samples | mean tau (image) "
        "| mean tau (text) |\n|---|---|---|---|"
    )
    for digit, samples, image, text in per_digit:
        print(f"| {digit} | {samples} | {image:.4f} | {text:.4f} |")
    for side, column in (("image", 2), ("text", 3)):
        spearman = spearmanr(counts, [row[column] for row in per_digit]).statistic
        print(f"\nSpearman(samples, mean tau {side}) = {spearman:+.3f}")
    print(
        f"\nzero-shot top-1 on the balanced held-out digits: iSogCLR {results['isogclr']:.4f}, "
        f"CLIP {results['softmax']:.4f}"
    )


if __name__ == "__main__":
    main()
