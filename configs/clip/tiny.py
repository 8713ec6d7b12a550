"""A tiny CLIP on the bundled digits: the embedded default's `tiny` variant.

    uv run clipjax train --config=configs/clip/tiny.py

Trains in seconds on a CPU; the published sizes are vit_b32.py, vit_b16.py, vit_l14.py.
"""

from clipjax.models.presets import tiny_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/clip/tiny.py has no variant {arg!r}")
    return tiny_config()
