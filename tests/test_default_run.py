"""The embedded default reaches its accuracy target (slow: a full run of minutes)."""

import json

import pytest

from clipjax.cli import main


@pytest.mark.slow
def test_default_run_reaches_held_out_zero_shot_target(tmp_path, digits_cache, capsys):
    code = main(["train", "--workdir", str(tmp_path), f"--config.data.cache_dir={digits_cache}"])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    top1 = rows[-1]["zeroshot/digits/top1"]
    logged = [row for row in rows if "train/loss" in row]
    assert all(0 < row["train/mfu"] < 1 for row in logged)
    assert all(0 <= row["train/data_wait_fraction"] <= 1 for row in logged)
    print(f"held-out zero-shot top-1: {top1:.4f}")
    assert top1 >= 0.85
