"""clipjax: CLIP-style image-text pretraining in JAX.

`clipjax.load(path)` gives a trained model ready to embed images and texts (see
`clipjax.inference`); the command line is `clipjax train|eval|...`.
"""


def load(path, **options):
    """`clipjax.inference.load`: imported only when called, so `import clipjax` stays light."""
    from clipjax.inference import load as _load

    return _load(path, **options)
