"""Using a trained model: `clipjax.load(path)` and the `LoadedModel` it returns."""

from clipjax.inference.model import LoadedModel, load

__all__ = ["LoadedModel", "load"]
