"""A trained model ready to embed images and texts: `clipjax.load(path)`.

Everything runs jitted on a mesh of this process's devices (by default all local
devices on the batch axis, parameters laid out by the config's sharding rules).
Inputs of any count are padded to one of a few batch shapes, so a new count rarely
recompiles, and the padding is cut from the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from PIL import Image

from clipjax.data.decode import eval_transform
from clipjax.data.pixels import pixel_normalizer
from clipjax.data.tokenizers import build_tokenizer
from clipjax.evaluate.runner import make_encoders
from clipjax.evaluate.standalone import imported_tokenizer_problems
from clipjax.inference.sources import read_source
from clipjax.interop.resize import resize_params

DEFAULT_BATCH = 256  # the largest batch one call hands the devices


class LoadedModel:
    """Embeds images and texts with a trained model; see `clipjax.load`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params: dict,
        source: str,
        mesh: Mesh | None = None,
        batch_size: int = DEFAULT_BATCH,
    ):
        from clipjax.interop.params_tree import abstract_params, fill_params
        from clipjax.models.spec import model_spec
        from clipjax.parallel import batch_sharding, build_mesh, param_shardings, rules_table

        self.config = config
        self.source = source
        self.mesh = mesh or build_mesh(dict(data=-1, fsdp=1, tensor=1), jax.local_devices())
        rules = rules_table(config.sharding_rules)
        spec = model_spec(config.model)
        abstract = abstract_params(config.model)
        shardings = param_shardings(spec.logical_specs, abstract, self.mesh, rules)
        tree = fill_params(abstract, params, source)
        self.params = jax.device_put(jax.tree.map(np.asarray, tree), shardings)
        self._batch_sharding = lambda ndim: batch_sharding(self.mesh, rules, ndim)
        self._devices = self.mesh.size // _replicas(self.mesh, rules)
        self.batch_size = max(batch_size // self._devices, 1) * self._devices
        self._transform = eval_transform(config.data)
        self._tokenizer = build_tokenizer(config.tokenizer)
        self._tokenizer_problems = imported_tokenizer_problems(config)
        self._encoders = {
            (tower, normalize): encoder
            for normalize in (True, False)
            for tower, encoder in zip(
                ("image", "text"),
                make_encoders(spec, shardings, config.data, normalize),
                strict=True,
            )
        }
        self._graphdef, self._param_shardings = spec.graphdef, shardings
        self._captioners: dict[tuple, Callable] = {}
        self._scalars = {k: np.asarray(v) for k, v in tree.items() if k.startswith("logit_")}

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self.config.model.embed_dim)

    @property
    def logit_scale(self) -> float:
        """The multiplier of cosine similarities in the logits (exp of the stored log)."""
        return float(np.exp(self._scalars["logit_scale"]))

    @property
    def logit_bias(self) -> float | None:
        """The logits' bias (SigLIP-style models), or None."""
        bias = self._scalars.get("logit_bias")
        return None if bias is None else float(bias)

    def preprocess(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image (PIL, or uint8 HWC / HW array) as the eval crops it: uint8
        `[image_size, image_size, 3]`; the encoder normalises it on the device."""
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise ValueError(
                    f"an image array of dtype {image.dtype} and shape {image.shape}; expected "
                    "uint8 HxW or HxWxC"
                )
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess takes a PIL image or uint8 array, not {type(image)}")
        return self._transform.crop(image.convert("RGB"), np.random.default_rng(0))

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int32 `[len(texts), context_length]` token ids."""
        if self._tokenizer_problems:
            raise ValueError(
                "tokenize: "
                + "; ".join(self._tokenizer_problems)
                + " (or pass its token ids to encode_text)"
            )
        if isinstance(texts, str):
            texts = [texts]
        return np.asarray(self._tokenizer(list(texts)), np.int32)

    def encode_image(self, pixels, normalize: bool = True) -> np.ndarray:
        """float32 `[N, embed_dim]` of `pixels`: uint8 `[N, S, S, 3]` crops from
        `preprocess`, float ones already normalised, or a list of PIL images."""
        return self._run(self._encoders["image", normalize], self._pixels(pixels))

    def encode_text(self, ids, normalize: bool = True) -> np.ndarray:
        """float32 `[N, embed_dim]` of token ids `[N, L]` (from `tokenize`) or of strings."""
        if _are_texts(ids):
            ids = self.tokenize(ids)
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"token ids of shape {ids.shape} and dtype {ids.dtype}; expected int [N, L]"
            )
        return self._run(self._encoders["text", normalize], ids.astype(np.int32))

    def zero_shot_classifier(
        self, classnames: Sequence[str], templates: Sequence[str]
    ) -> np.ndarray:
        """`[classes, embed_dim]`: each class's prompts (templates with `{c}`) embedded,
        averaged and renormalised, as the zero-shot eval does."""
        from clipjax.evaluate.assets import check_templates
        from clipjax.evaluate.zeroshot import class_embeddings

        check_templates(tuple(templates), "templates")
        classes = class_embeddings(
            self.encode_text, self.tokenize, tuple(classnames), tuple(templates)
        )
        return classes.astype(np.float32)

    def classify(self, images, classifier: np.ndarray) -> np.ndarray:
        """Logits `[N, classes]`: scaled cosine similarity (plus the bias, if any) of
        `images` (as `encode_image` takes them) to `zero_shot_classifier`'s rows."""
        embeddings = self.encode_image(images).astype(np.float64)
        logits = self.logit_scale * embeddings @ np.asarray(classifier, np.float64).T
        return (logits + (self.logit_bias or 0.0)).astype(np.float32)

    def caption(
        self, images, *, max_len: int | None = None, beams: int = 1, length_penalty: float = 0.0
    ) -> list[str]:
        """Captions of `images` (as `encode_image` takes them) by a CoCa model: greedy
        decoding (`beams=1`) or beam search, with a key/value cache, up to `max_len`
        tokens (default: the text context length)."""
        if self.config.model.name != "coca":
            raise ValueError(f"a {self.config.model.name!r} model has no caption decoder (CoCa)")
        if not hasattr(self._tokenizer, "decode"):
            raise ValueError(
                f"tokenizer.kind={self.config.tokenizer.kind!r} cannot decode captions; "
                "captioning supports the 'bytes' and 'clip' tokenizers"
            )
        pixels = self._pixels(images)
        max_len = max_len or int(self.config.model.text.context_length)
        key = (max_len, beams, length_penalty)
        if key not in self._captioners:
            self._captioners[key] = self._captioner(max_len, beams, length_penalty)
        tokens = self._run(self._captioners[key], pixels, np.int32)
        return [self._tokenizer.decode(row[1:]) for row in tokens]

    def _captioner(self, max_len: int, beams: int, length_penalty: float) -> Callable:
        from clipjax.models.generate import beam_captions, greedy_captions

        normalize = pixel_normalizer(self.config.data.mean, self.config.data.std)
        ids = dict(
            sot_id=self._tokenizer.sot_id,
            eot_id=self._tokenizer.eot_id,
            max_len=max_len,
            pad_id=int(self.config.model.text.get("pad_id", 0)),
        )

        def run(params, pixels):
            model = nnx.merge(self._graphdef, params)
            if beams == 1:
                return greedy_captions(model, normalize(pixels), **ids)
            return beam_captions(
                model, normalize(pixels), beams=beams, length_penalty=length_penalty, **ids
            )

        return jax.jit(run, in_shardings=(self._param_shardings, None))

    def _pixels(self, pixels) -> np.ndarray:
        if isinstance(pixels, list | tuple):
            pixels = np.stack([self.preprocess(image) for image in pixels])
        pixels = np.asarray(pixels)
        size = self.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"pixels of shape {pixels.shape}; expected [N, {size}, {size}, 3]")
        return pixels

    def _run(self, encode: Callable, data: np.ndarray, dtype=np.float32) -> np.ndarray:
        outputs = []
        for start in range(0, len(data), self.batch_size):
            chunk = data[start : start + self.batch_size]
            rows = _padded_rows(len(chunk), self._devices, self.batch_size)
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], rows - len(chunk), axis=0)])
            array = jax.device_put(padded, self._batch_sharding(padded.ndim))
            outputs.append(np.asarray(encode(self.params, array))[: len(chunk)])
        if not outputs:
            raise ValueError("nothing to encode: an empty batch")
        return np.concatenate(outputs).astype(dtype)


def _are_texts(values) -> bool:
    if isinstance(values, str):
        return True
    return isinstance(values, list | tuple) and bool(values) and isinstance(values[0], str)


def _replicas(mesh: Mesh, rules) -> int:
    """How many devices hold each batch row (mesh axes the batch is not split over)."""
    from clipjax.parallel import axis_size, batch_axes

    return mesh.size // axis_size(mesh, batch_axes(rules))


def _padded_rows(count: int, devices: int, largest: int) -> int:
    """The smallest power-of-two multiple of `devices` holding `count`, at most `largest`."""
    rows = devices
    while rows < count:
        rows *= 2
    return min(rows, largest)


def load(
    path: str | Path,
    *,
    step: int | None = None,
    mesh: Mesh | None = None,
    image_size: int | None = None,
    context_length: int | None = None,
    open_clip_config: str | Path | dict | None = None,
    act: str | None = None,
    image_heads: int | None = None,
    text_heads: int | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> LoadedModel:
    """A trained model from `path`: a clipjax workdir, checkpoints/ or step directory
    (`step`: default the latest), a `clipjax convert` export, an HF CLIP directory, or
    an open_clip state dict with `open_clip_config` (its model-config JSON) or with
    `act`, `image_heads` and `text_heads`.

    `image_size` / `context_length` load it at another resolution (position embeddings
    resampled bicubically) or text length; `mesh` places it (default: this process's
    devices on the batch axis)."""
    loaded = read_source(path, step, open_clip_config, act, image_heads, text_heads)
    config = loaded.config
    model_cfg, params = resize_params(loaded.params, config.model, image_size, context_length)
    with config.unlocked():
        config.model = model_cfg
        config.data.image_size = model_cfg.image.image_size
        config.tokenizer.context_length = model_cfg.text.get(
            "context_length", config.tokenizer.context_length
        )
    config.lock()
    return LoadedModel(config, params, loaded.source, mesh, batch_size)
