"""Contrastive losses across the device mesh."""

from clipjax.losses.contrastive import KINDS, STRATEGIES, LossSpec, contrastive_loss

__all__ = ["KINDS", "STRATEGIES", "LossSpec", "contrastive_loss"]
