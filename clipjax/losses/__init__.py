"""Contrastive losses."""

from clipjax.losses.contrastive import contrastive_loss

__all__ = ["contrastive_loss"]
