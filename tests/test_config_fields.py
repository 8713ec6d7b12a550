"""Every field of every shipped config is read by the run it configures, and a field
its family, tower, loss or optimizer does not use is refused.

The walk shrinks each shipped config's values (widths, steps, batch) without adding
or removing a field, points it at the bundled digits, and runs the launch stage and
`train()` while recording which config fields are read. The checks' own reads do
not count: a field only the validator looks at is not used by the run.
"""

import sys
from contextlib import contextmanager
from pathlib import Path

import ml_collections
import pytest
from ml_collections import ConfigDict

import clipjax.train.loop as loop
from clipjax.config import ConfigError, apply_overrides, load_config
from clipjax.distributed import Timeouts
from clipjax.evaluate.fields import complete_evals
from clipjax.fieldcheck import is_unset
from clipjax.validation import config_problems, validate

SHIPPED = {
    "configs/default.py": (None, "tiny"),
    "configs/clip/tiny.py": (None,),
    "configs/clip/vit_b32.py": (None, "smoke"),
    "configs/clip/vit_b16.py": (None, "improved", "smoke"),
    "configs/clip/vit_l14.py": (None, "smoke"),
    "configs/clip/isogclr.py": (None, "tiny"),
    "configs/siglip/vit_b16.py": (None, "tiny", "smoke"),
    "configs/align/efficientnet_b3.py": (None, "tiny", "smoke"),
    "configs/coca/base.py": (None, "tiny", "smoke"),
    "configs/lit/vit_b16.py": (None, "smoke"),
    "configs/symile/xor.py": (None, "tiny", "pairwise"),
}
# Walked in the default suite; the others (each compiles a bigger program or runs
# evals) in the slow stage
QUICK = ("configs/default.py:tiny", "configs/symile/xor.py:tiny")
SPECS = [
    pytest.param(spec, marks=() if spec in QUICK else pytest.mark.slow)
    for spec in (f"{p}:{v}" if v else p for p, vs in SHIPPED.items() for v in vs)
]
INTERNAL = ("get", "__getattr__", "__getitem__", "items", "values", "iteritems", "itervalues")


def test_every_shipped_config_file_is_walked():
    shipped = {str(p) for p in Path("configs").rglob("*.py")}
    assert shipped == set(SHIPPED)


class FieldReads:
    """Records `(id(group), field)` for every leaf read outside ml_collections' own
    serialisation (`to_dict`, repr), while `active`."""

    def __init__(self):
        self.reads: set[tuple[int, str]] = set()
        self.active = True

    def record(self, group, key, frame) -> None:
        while frame is not None and frame.f_globals.get("__name__", "").startswith(
            "ml_collections"
        ):
            if frame.f_code.co_name not in INTERNAL:
                return  # to_dict, __repr__, __eq__: not a use of the field
            frame = frame.f_back
        if self.active:
            self.reads.add((id(group), key))

    @contextmanager
    def paused(self):
        self.active = False
        try:
            yield
        finally:
            self.active = True


@contextmanager
def recording():
    reads = FieldReads()
    original = ConfigDict.__getitem__

    def getitem(self, key):
        value = original(self, key)
        if not isinstance(value, ConfigDict) and isinstance(key, str) and "." not in key:
            reads.record(self, key, sys._getframe(1))
        return value

    ConfigDict.__getitem__ = getitem
    try:
        yield reads
    finally:
        ConfigDict.__getitem__ = original


def set_leaves(group: ConfigDict, prefix: str = ""):
    """(id(group), field, dotted path) of every leaf that holds a value."""
    for key in group:
        value = group._fields[key]
        path = f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            yield from set_leaves(value, path + ".")
        elif not is_unset(value):
            yield id(group), key, path


def image_folder(root: Path) -> Path:
    """`root/val/<class>/*.png`: a stand-in for the recipes' ImageNet folder."""
    from PIL import Image

    for index, name in enumerate(("tench", "goldfish", "great_white_shark")):
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.new("RGB", (20, 24), (80 * index, 40 * i, 90)).save(
                root / "val" / name / f"{i}.png"
            )
    return root


def shrink(config: ConfigDict, digits_cache: Path, init_from: str) -> None:
    """Small values for every size, the digits as data (and a small image folder for an
    ImageNet eval): the same fields, a run of seconds."""
    overrides = [
        "train.steps=2",
        "train.batch_size=16",
        "train.log_every=1",
        "optim.warmup_steps=1",
        "checkpoint.every=1",
        "mesh.data=-1",
        "mesh.fsdp=1",
        "mesh.tensor=1",
    ]
    model = config.model
    if model.name == "symile":
        for name in model.modalities:
            overrides += [f"model.modalities.{name}.width=16", f"model.modalities.{name}.depth=1"]
        apply_overrides(config, [*overrides, "model.embed_dim=16"])
        return
    overrides += ["model.embed_dim=32", "model.text.width=32", "model.text.heads=2"]
    if "depth" in model.text:
        overrides.append("model.text.depth=1")
    if model.image.kind == "vit":
        overrides += [
            f"model.image.{k}={v}"
            for k, v in dict(image_size=16, patch_size=8, width=32, depth=1, heads=2).items()
        ]
    else:
        overrides += ["model.image.width_coefficient=0.25", "model.image.depth_coefficient=0.2"]
    if "coca" in model:
        overrides += [
            f"model.coca.{k}={v}"
            for k, v in dict(
                unimodal_depth=1, multimodal_depth=1, decoder_queries=4, pool_heads=2
            ).items()
        ]
    overrides += ["data.image_size=16", "data.shuffle_buffer=64"]
    if config.data.get("streams"):  # the recipes' 1,024 streams: 2, for 3 shards of batch 16
        overrides.append("data.streams=2")
    if config.data.get("workers"):  # inline, where the reads are recorded (workers: the same)
        overrides.append("data.workers=0")
    sources = [config.data.source, *(e.source for e in config.evals.values())]
    if "digits" in sources:  # the digits are built (or found) in the cache
        overrides.append(f"data.cache_dir={digits_cache}")
    for name, entry in config.evals.items():
        if entry.source == "image_folder" and not entry.dataset_dir:
            folder = image_folder(digits_cache.parent / "imagenet_stand_in")
            overrides.append(f"evals.{name}.dataset_dir={folder}")
    if config.data.source == "shards":
        train = digits_cache / next(p.name for p in digits_cache.iterdir() if p.is_dir()) / "train"
        overrides.append(f"data.train_shards={train}/{{00000..00002}}.tar")
    if model.get("frozen"):
        overrides.append(f"init_from={init_from}")
    if config.loss.get("isogclr"):  # rho must stay below ln(B - 1) of the smaller batch
        from clipjax.losses.isogclr import rho_for_batch

        overrides.append(f"loss.isogclr.rho={rho_for_batch(16)}")
    apply_overrides(config, overrides)


def walk_devices(config: ConfigDict) -> list:
    """All 8 simulated devices, but one for the pod recipes (`train.samples_seen`): their
    scanned, rematerialised bf16 step with the ring loss deadlocked XLA's CPU runtime on
    8 devices now and then (jax 0.10.2: 6 device threads waiting in an all-reduce, 2 in a
    collective permute, until the rendezvous aborted the process); a real CPU run has
    one device."""
    import jax

    return jax.devices()[:1] if config.train.get("samples_seen") else jax.devices()


@pytest.fixture(scope="module")
def lit_towers(tmp_path_factory, digits_cache):
    """`tower(spec, scan)`: a shrunk run of the CLIP config `spec`, its blocks scanned or
    not: the checkpoint a LiT config's locked image tower loads."""
    built = {}

    def tower(spec: str, scan: bool) -> str:
        if (spec, scan) not in built:
            config = load_config(spec)
            config.model.scan_layers = scan
            shrink(config, digits_cache, "")
            workdir = tmp_path_factory.mktemp("lit_tower")
            loop.train(config, workdir, devices=walk_devices(config))
            built[spec, scan] = str(workdir / "checkpoints")
        return built[spec, scan]

    return tower


@pytest.mark.parametrize("spec", SPECS)
def test_every_field_of_a_shipped_config_is_read(
    spec, tmp_path, digits_cache, monkeypatch, request
):
    config = load_config(spec)
    complete_evals(config)
    init_from = ""
    if config.model.get("frozen"):  # the smoke variant has the tiny config's towers
        clip = "configs/clip/vit_b16.py" + (":smoke" if spec.endswith(":smoke") else "")
        init_from = request.getfixturevalue("lit_towers")(clip, config.model.scan_layers)
    shrink(config, digits_cache, init_from)
    with recording() as reads:
        real_validate = loop.validate

        def validate_unrecorded(*args, **kwargs):
            with reads.paused():
                return real_validate(*args, **kwargs)

        monkeypatch.setattr(loop, "validate", validate_unrecorded)
        Timeouts.from_config(config.distributed)  # the launch stage of a multi-process run
        loop.train(config, tmp_path, devices=walk_devices(config))
    unread = [path for group, key, path in set_leaves(config) if (group, key) not in reads.reads]
    assert unread == []


def refused(spec: str, overrides: list[str], num_devices: int = 8) -> str:
    config = load_config(spec)
    complete_evals(config)
    apply_overrides(config, overrides)
    with pytest.raises(ConfigError) as info:
        validate(config, num_devices, reads_data=False)
    return str(info.value)


def test_coca_refuses_the_two_tower_text_fields_it_does_not_read():
    config = load_config("configs/default.py:tiny")
    with config.unlocked():
        config.model.name = "coca"
        config.model.coca = ml_collections.ConfigDict(
            dict(
                unimodal_depth=1,
                multimodal_depth=1,
                decoder_queries=4,
                pool_heads=2,
                contrastive_weight=1.0,
                caption_weight=2.0,
            )
        )
    problems = config_problems(config, 8, 1, reads_data=False)
    assert len(problems) == 1
    assert problems[0].startswith(
        "model.text.causal, model.text.depth, model.text.eos_id, model.text.ln_eps, "
        "model.text.mask_padding, model.text.pool, model.text.projection, "
        "model.text.token_dropout are not used by model.name='coca'"
    )
    assert "--config.model.text.causal=None" in problems[0]
    apply_overrides(
        config,
        [
            f"model.text.{f}=None"
            for f in ("causal", "depth", "eos_id", "token_dropout", "mask_padding", "ln_eps")
        ],
    )
    apply_overrides(config, ["model.text.projection=''"])
    apply_overrides(config, ["model.text.pool=''"])  # a text field: '' is "not given"
    assert config_problems(config, 8, 1, reads_data=False) == []


def test_efficientnet_refuses_the_vit_fields():
    config = load_config("configs/align/efficientnet_b3.py:tiny")
    assert config_problems(config, 8, 1, reads_data=False) == []
    with config.unlocked():
        config.model.image.patch_size = 16
        config.model.image.heads = 12
    (problem,) = config_problems(config, 8, 1, reads_data=False)
    assert problem.startswith(
        "model.image.heads, model.image.patch_size are not used by model.image.kind='efficientnet'"
    )


def test_symile_refuses_the_pair_loss_fields():
    config = load_config("configs/symile/xor.py:tiny")
    with config.unlocked():
        config.loss.strategy = "ring"
        config.loss.label_smoothing = 0.1
        config.loss.uniformity_weight = 0.5
    (problem,) = config_problems(config, 8, 1, reads_data=False)
    assert problem.startswith(
        "loss.label_smoothing, loss.strategy, loss.uniformity_weight are not used by "
        "loss.kind='symile'"
    )


@pytest.mark.parametrize(
    "optimizer, refused_fields",
    [("adafactor", "optim.b2, optim.eps are"), ("lion", "optim.eps is")],
)
def test_an_optimizer_refuses_the_fields_it_does_not_read(optimizer, refused_fields):
    message = refused("configs/default.py:tiny", [f"optim.name={optimizer}"])
    assert f"{refused_fields} not used by optim.name={optimizer!r}" in message
    config = load_config("configs/default.py:tiny")
    unused = refused_fields.split(" ")[:-1]
    apply_overrides(config, [f"optim.name={optimizer}"] + [f"{f.strip(',')}=None" for f in unused])
    validate(config, 8, reads_data=False)


def test_a_schedule_field_is_read_only_by_its_schedule():
    message = refused("configs/default.py:tiny", ["optim.cooldown_steps=3"])
    assert (
        "optim.cooldown_steps is not used by optim.name='adamw' with optim.schedule='cosine'"
        in (message)
    )
    message = refused("configs/default.py:tiny", ["optim.schedule=constant_cooldown"])
    assert "optim.cooldown_steps is not set: expected int" in message


def test_an_eval_entry_refuses_the_fields_its_kind_and_source_do_not_read():
    from clipjax.evaluate.fields import EVAL_DEFAULTS, drop_unread_defaults, eval_problems

    evals = ConfigDict(
        dict(
            coco=dict(kind="retrieval", source="clip_benchmark", dataset_dir="/d", limit=5),
            probe=dict(kind="linear_probe", source="tfds", dataset_name="cifar10"),
            flickr=dict(
                kind="retrieval", source="clip_benchmark", dataset_dir="/f", image_members="gif"
            ),
        )
    )
    assert eval_problems(evals) == [
        "evals.coco has fields ['limit'] that kind 'retrieval' from source 'clip_benchmark' "
        "does not read; its fields: kind, source, split, every, batch_size, dataset_dir, "
        "dataset_name, image_members",
        "evals.flickr.image_members: key 'gif' is not decodable; allowed: "
        "['cls', 'jpeg', 'jpg', 'json', 'png', 'txt', 'webp']",
        "evals.probe.source='tfds' needs evals.probe.dataset_dir",
    ]
    # a config.json written before entries held only their own fields: every field, at
    # its default where unread
    saved = ConfigDict(dict(evals=dict(digits=dict(kind="zeroshot", source="digits"))))
    saved.evals.digits.update(EVAL_DEFAULTS)
    drop_unread_defaults(saved)
    assert sorted(saved.evals.digits) == sorted(
        ["kind", "source", "split", "every", "batch_size", "templates_file", "classnames_file"]
    )
    assert eval_problems(saved.evals) == []


def test_a_config_saved_before_the_newer_fields_existed_still_validates():
    """An older workdir's config.json lacks the fields added since (attention choice,
    text masking, data budget, peak, profile window): absent means off, as it ran."""
    config = load_config("configs/default.py:tiny")
    with config.unlocked():
        del config.model["attention"], config.model.text["token_dropout"]
        for field in ("samples_seen", "peak_tflops", "profile_steps"):
            del config.train[field]
    assert config_problems(config, 8, 1, reads_data=False) == []


def test_eval_entries_can_be_added_from_the_command_line():
    """What `clipjax train/eval/compile` do with overrides: new eval entries first (from
    their kind and source), then every override (the CLI path: test_validation_loss)."""
    from clipjax.evaluate.fields import add_entries_from_overrides
    from clipjax.validation import validate

    def override(config, overrides):
        add_entries_from_overrides(config, overrides)
        apply_overrides(config, overrides)

    config = load_config("configs/default.py:tiny")
    override(
        config,
        [
            "evals.val.shards=/held/{0..3}.tar",  # before its kind and source: any order
            "evals.val.kind=contrastive_loss",
            "evals.val.source=shards",
            "evals.val.batch_size=32",
            "evals.cifar.kind=zeroshot",
            "evals.cifar.source=clip_benchmark",
            "evals.cifar.dataset_dir=/data/wds_cifar10",
            "evals.cifar.image_members=png",
        ],
    )
    assert config.evals.val.shards == "/held/{0..3}.tar" and config.evals.val.batches == 10
    assert config.evals.val.batch_size == 32
    assert config.evals.cifar.dataset_dir == "/data/wds_cifar10"
    assert config.evals.cifar.image_members == "png" and config.evals.cifar.every == 0
    validate(config, num_devices=8)
    with pytest.raises(ValueError, match=r"new eval entry evals.x needs --config.evals.x.kind="):
        override(config, ["evals.x.dataset_dir=/d", "evals.x.kind=zeroshot"])
    with pytest.raises(ConfigError, match=r"unknown config field 'evals.y.limit'"):
        override(config, ["evals.y.kind=zeroshot", "evals.y.source=digits", "evals.y.limit=5"])
