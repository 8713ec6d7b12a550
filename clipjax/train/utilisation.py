"""Model FLOPs utilisation (MFU) of a run: the architecture's FLOPs per step
(`clipjax/flops.py`) at the measured step rate, over the peak of all the run's chips."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jax

from clipjax.flops import Peak, counts_model, device_peak, train_flops_per_example

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Utilisation:
    flops_per_step: float  # the whole global batch's
    peak: Peak  # one chip's
    chips: int

    def metrics(self, steps_per_sec: float) -> dict[str, float]:
        achieved = self.flops_per_step * steps_per_sec
        return {
            "train/model_tflops_per_sec": achieved / 1e12,
            "train/mfu": achieved / (self.peak.flops_per_s * self.chips),
        }


def run_peak(train_cfg, model_cfg, device: jax.Device) -> Peak:
    """`train.peak_tflops` per chip if set, else the device's data sheet for the
    model's compute dtype (on CPUs an estimate, `flops.cpu_peak`, shared by the
    host's simulated devices)."""
    override = train_cfg.get("peak_tflops")
    if override:
        return Peak(float(override) * 1e12, "train.peak_tflops")
    peak = device_peak(device, model_cfg.dtype)
    if device.platform == "cpu":  # simulated devices share the host's cores
        shared = len([d for d in jax.local_devices() if d.platform == "cpu"])
        return Peak(peak.flops_per_s / shared, f"{peak.source} / {shared} CPU devices")
    return peak


def utilisation_for(config, devices: list[jax.Device]) -> Utilisation | None:
    """The run's MFU meter, or None (logged once, with why) where the architecture's
    FLOPs are not counted or the chip's peak is unknown."""
    if not counts_model(config.model):
        log.warning("MFU is not reported: clipjax/flops.py counts CLIP ViT towers only")
        return None
    try:
        peak = run_peak(config.train, config.model, devices[0])
    except RuntimeError as exc:
        log.warning("MFU is not reported: %s (train.peak_tflops sets it)", exc)
        return None
    batch = config.train.batch_size
    flops = train_flops_per_example(config.model, batch) * batch
    log.info(
        "MFU against %.3g TFLOP/s per chip (%s) x %d",
        peak.flops_per_s / 1e12,
        peak.source,
        len(devices),
    )
    return Utilisation(float(flops), peak, len(devices))
