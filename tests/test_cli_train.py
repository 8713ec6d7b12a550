"""The main command end to end on the tiny variant."""

import json

from clipjax.cli import main


def train_tiny(workdir, cache, *overrides: str) -> int:
    return main(
        [
            "train",
            "--config",
            "configs/default.py:tiny",
            "--workdir",
            str(workdir),
            f"--config.data.cache_dir={cache}",
            *overrides,
        ]
    )


def metric_rows(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_command_writes_config_metrics_and_tensorboard(tmp_path, digits_cache, capsys):
    code = train_tiny(
        tmp_path,
        digits_cache,
        "--config.train.steps=4",
        "--config.train.log_every=2",
        "--config.mesh.data=-1",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "step      2/4" in out and "img/s" in out and "ETA" in out
    assert "zeroshot/digits/top1" in out

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["steps"] == 4
    rows = metric_rows(tmp_path)
    assert [row["step"] for row in rows] == [2, 4]
    assert {
        "train/loss",
        "train/temperature",
        "train/images_per_sec",
        "data/skipped_samples",
    } <= set(rows[0])
    assert 0.0 <= rows[-1]["zeroshot/digits/top1"] <= 1.0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    code = train_tiny(
        tmp_path, digits_cache, "--config.train.steps=6", "--config.train.log_every=2"
    )
    assert code == 0
    assert "trained 2 steps" in (out := capsys.readouterr().out) and "resumed from step 4" in out
    assert [row["step"] for row in metric_rows(tmp_path)] == [2, 4, 6]

    import shutil

    shutil.rmtree(tmp_path / "checkpoints")  # no checkpoint: a fresh run, old metrics kept aside
    assert train_tiny(tmp_path, digits_cache, "--config.train.steps=3") == 0
    assert (tmp_path / "metrics.previous-1.jsonl").exists()


def test_divergence_stops_with_a_clear_error_and_keeps_metrics(tmp_path, digits_cache, capsys):
    code = train_tiny(
        tmp_path,
        digits_cache,
        "--config.train.steps=6",
        "--config.train.log_every=1",
        "--config.optim.lr=1e30",
        "--config.optim.clip_norm=0",
        "--config.optim.warmup_steps=0",
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "training diverged: non-finite loss" in err and "no checkpoint holds it" in err
    rows = metric_rows(tmp_path)
    assert rows and all(row["step"] < 6 for row in rows)
