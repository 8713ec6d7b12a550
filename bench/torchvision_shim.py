"""Lets open_clip import next to a CPU-only torch when torchvision is PyPI's CUDA build.

That torchvision registers fake/autograd kernels for its compiled `torchvision::`
operators at import; the operators do not exist in a CPU torch, so the
registration raises `operator torchvision::nms does not exist`. Importing this
module first makes those two registration calls no-ops for `torchvision::`
names only (every other registration goes through unchanged). torchvision's
compiled ops (nms, roi_align, ...) stay unusable; its transforms and
open_clip's training path do not need them.
"""

from __future__ import annotations

import functools

import torch


def _skip_torchvision_ops(register):
    @functools.wraps(register)
    def wrapper(op, *args, **kwargs):
        name = op if isinstance(op, str) else getattr(op, "__name__", "")
        if name.startswith("torchvision::"):
            if args and callable(args[0]):  # register_autograd(op, backward, ...)
                return None
            return lambda fn=None: fn  # used as a decorator: register_fake(op)(fn)
        return register(op, *args, **kwargs)

    return wrapper


torch.library.register_fake = _skip_torchvision_ops(torch.library.register_fake)
torch.library.register_autograd = _skip_torchvision_ops(torch.library.register_autograd)
