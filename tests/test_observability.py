"""MFU, the data-wait split and host-to-device bytes in the logs, and the profiler
window (train.peak_tflops, train.profile_steps)."""

import json
import logging
from pathlib import Path

import jax
import pytest
from jax.profiler import ProfileData

from clipjax.config import ConfigError, load_config
from clipjax.flops import Peak, cpu_peak, train_flops_per_example
from clipjax.train import step_clock
from clipjax.train.loop import train
from clipjax.train.step_clock import StepClock
from clipjax.train.utilisation import Utilisation, run_peak, utilisation_for
from clipjax.validation import validate


def test_mfu_is_the_architecture_flops_at_the_step_rate_over_all_chips_peak():
    config = load_config("configs/default.py:tiny")
    config.train.peak_tflops = 2.5
    meter = utilisation_for(config, jax.devices())
    flops = train_flops_per_example(config.model, 32) * 32
    assert meter == Utilisation(float(flops), Peak(2.5e12, "train.peak_tflops"), 8)
    values = meter.metrics(steps_per_sec=4.0)
    assert values["train/model_tflops_per_sec"] == pytest.approx(4 * flops / 1e12)
    assert values["train/mfu"] == pytest.approx(4 * flops / (8 * 2.5e12))


def test_mfu_is_not_reported_for_towers_the_flop_count_does_not_describe(caplog):
    config = load_config("configs/align/efficientnet_b3.py:tiny")
    with caplog.at_level(logging.WARNING):
        assert utilisation_for(config, jax.devices()) is None
    assert "counts CLIP ViT towers only" in caplog.text


def test_step_clock_splits_wall_time_into_data_wait_compute_and_elsewhere(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(step_clock.time, "perf_counter", lambda: now[0])
    clock = StepClock()
    batch = {"image": bytearray(3000), "text": bytearray(1000)}
    for _ in range(4):  # per step: 0.25 s waiting, 1 s computing
        clock.waited_for_data(0.25, {k: memoryview(v) for k, v in batch.items()})
        clock.stepped()
        now[0] += 1.25
    clock.spent_elsewhere(2.0)  # an eval: not a step's time
    now[0] += 2.0
    values = clock.read()
    assert values["train/step_ms"] == pytest.approx(1250)
    assert values["train/data_wait_ms"] == pytest.approx(250)
    assert values["train/compute_ms"] == pytest.approx(1000)
    assert values["train/data_wait_fraction"] == pytest.approx(0.2)
    assert values["train/h2d_bytes_per_step"] == 4000
    assert values["train/h2d_mb_per_sec"] == pytest.approx(16000 / 5.0 / 1e6)
    now[0] += 1.0
    assert clock.read()["train/data_wait_ms"] == 0  # a read starts the next interval


def test_a_run_logs_mfu_and_data_wait_and_writes_a_profile_it_can_read_back(tiny_config, tmp_path):
    tiny_config.train.profile_steps = (2, 3)
    train(tiny_config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "train/loss" in row]
    assert [row["step"] for row in logged] == [4, 8]
    for row in logged:
        assert 0 < row["train/mfu"] < 1
        assert 0 <= row["train/data_wait_fraction"] <= 1
        assert row["train/compute_ms"] + row["train/data_wait_ms"] == pytest.approx(
            row["train/step_ms"]
        )
    # 8 digits pairs a device: 32 x (32 x 32 x 3 pixels + 32 tokens) uint8 / int32 values
    assert logged[-1]["train/h2d_bytes_per_step"] == 32 * (32 * 32 * 3 + 32 * 4)

    traces = list(Path(tmp_path, "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1
    profile = ProfileData.from_file(str(traces[0]))
    steps = {
        int(dict(event.stats)["step_num"])
        for plane in profile.planes
        for line in plane.lines
        for event in line.events
        if event.name == "train"
    }
    assert steps == {2, 3}


@pytest.mark.parametrize(
    "steps, message",
    [
        ((3, 2), "1 <= start <= end <= train.steps=8"),
        ((1, 9), "train.steps=8"),
        ((1,), "(start, end)"),
    ],
)
def test_a_profile_window_outside_the_run_is_refused(tiny_config, steps, message):
    tiny_config.train.profile_steps = steps
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(tiny_config, 8, 1)


def test_a_non_positive_peak_is_refused(tiny_config):
    tiny_config.train.peak_tflops = 0.0
    with pytest.raises(ConfigError, match=r"train\.peak_tflops=0\.0 must be positive"):
        validate(tiny_config, 8, 1)


def test_simulated_cpu_devices_share_the_hosts_peak():
    config = load_config("configs/default.py:tiny")
    whole = cpu_peak().flops_per_s
    assert run_peak(config.train, config.model, jax.devices()[0]).flops_per_s == pytest.approx(
        whole / 8
    )
