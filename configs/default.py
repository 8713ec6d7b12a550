"""The embedded default: a tiny CLIP on scikit-learn's bundled digits.

`uv run clipjax train` builds captioned webdataset shards from the digits
(cached), trains a small ViT + causal text transformer with symmetric InfoNCE
on all local devices, and reports zero-shot accuracy on held-out digits with
prompt templates never seen in training.

Variants: `configs/default.py:tiny` (a few steps, for tests and smoke runs).
"""

import ml_collections

from clipjax.evaluate.fields import eval_entry


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "digits"  # "digits": build/reuse the bundled shards; "shards": train_shards
    c.data.train_shards = ""  # brace spec, e.g. "/data/{00000..00099}.tar"; several: "a::b"
    c.data.weights = ()  # mixing weights, one per "::" spec; (): one source of all shards
    c.data.cache_dir = ""  # where digits shards are cached; "" = $XDG_CACHE_HOME/clipjax
    c.data.image_key = "png;jpg;jpeg;webp"
    c.data.text_key = "txt"  # or "json.caption"
    c.data.image_size = 32
    c.data.mean = (0.5, 0.5, 0.5)
    c.data.std = (0.5, 0.5, 0.5)
    # the eval crop, as open_clip's eval transform (torchvision's arithmetic):
    # shortest: short side, center crop | longest: long side, padded | squash: both sides
    c.data.eval_resize = "shortest"
    c.data.eval_interpolation = "bicubic"  # bicubic | bilinear
    c.data.crop_scale = (0.7, 1.0)  # random-resized-crop area range; (1.0, 1.0) disables
    # Training augmentations after the crop, each seeded by the sample's stream position
    # (clipjax/data/augment.py; configs/clip/vit_b16.py:improved uses them). A probability
    # of 0 turns one off, and its parameters are then left unset.
    c.data.augment = ml_collections.ConfigDict(
        dict(
            hflip_prob=0.0,
            color_jitter_prob=0.0,
            color_jitter=(),  # (brightness, contrast, saturation, hue), e.g. (0.4, 0.4, 0.2, 0.1)
            grayscale_prob=0.0,
            blur_prob=0.0,
            blur_sigma=(),  # (lo, hi) standard deviation in pixels, e.g. (0.1, 2.0)
            text_prob=0.0,  # EDA: chance a caption gets one of text_ops
            text_ops=(),  # some of ("delete", "swap", "insert")
            text_alpha=None,  # fraction of the caption's words changed, e.g. 0.1
        )
    )
    c.data.mode = "epoch"  # epoch: every shard once per epoch | resampled: with replacement
    c.data.shuffle_buffer = 2000
    c.data.streams = 0  # independent streams; fixed: same data on any process count; 0: 1/process
    c.data.workers = 0  # reader processes per process, each owning whole streams; 0: inline
    c.data.max_pixels = 64_000_000
    # The most samples a training shard holds (img2dataset's number_sample_per_shard; the
    # digits: 512). Set, batches carry each example's stable number (shard x this +
    # position), which state kept per example needs (loss.kind="isogclr").
    c.data.samples_per_shard = None
    # stop when more than this fraction of the first sanity_samples samples (per stream)
    # cannot be used, e.g. a wrong image_key or text_key; skips are logged once per shard
    c.data.max_skipped_fraction = 0.5
    c.data.sanity_samples = 1000

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "bytes"
    c.tokenizer.context_length = 32
    c.tokenizer.lowercase = True  # bytes, hf, sentencepiece; clip always lowercases
    # clip: a bpe_simple_vocab_16e6.txt.gz ("": the bundled one); hf: a tokenizer.json;
    # sentencepiece: a .model file
    c.tokenizer.path = ""

    c.model = ml_collections.ConfigDict()
    c.model.name = "clip"  # clip: two towers (CLIP, SigLIP, ALIGN, LiT) | coca | symile
    c.model.embed_dim = 128
    c.model.temperature_init = 0.07
    c.model.logit_bias_init = None  # a float adds SigLIP's learned bias (SigLIP: -10.0)
    c.model.dtype = "float32"
    c.model.param_dtype = "float32"
    c.model.scan_layers = False  # stack blocks on a `layers` axis and nnx.scan over them
    c.model.remat = "none"  # none | full | dots: what a block keeps for the backward pass
    # xla | cudnn (GPU, bf16) | flash (TPU Pallas kernel) | auto: flash on TPU, else xla
    # (clipjax/models/attention.py)
    c.model.attention = "auto"
    c.model.frozen = ()  # top-level parameter groups never updated, e.g. ("image",) for LiT
    c.model.image = ml_collections.ConfigDict(
        dict(
            kind="vit",  # vit | efficientnet (ALIGN)
            image_size=32,
            patch_size=8,
            width=128,
            depth=3,
            heads=4,
            mlp_ratio=2.0,
            act="gelu",
            pool="gap",
            ln_pre=False,
            patch_bias=True,
            # FLIP (Li et al. 2023): the fraction of patch tokens each training image
            # drops, at random (the class token stays); none at eval. 0.5 in the paper
            patch_dropout=0.0,
            # none: the pooled output is the embedding (SigLIP: needs embed_dim == width)
            projection="linear",  # linear | linear_bias | none
            ln_eps=1e-5,  # every LayerNorm's epsilon (SigLIP: 1e-6)
        )
    )
    c.model.text = ml_collections.ConfigDict(
        dict(
            vocab_size=320,
            context_length=32,
            width=128,
            depth=2,
            heads=4,
            mlp_ratio=2.0,
            act="gelu",
            causal=True,  # False: a bidirectional encoder that ignores padding (BERT-style)
            pool="argmax",  # argmax: the end token has the largest id (CLIP) | last: last non-pad
            # | eos: the first eos_id | cls: position 0 (BERT-style) | final: the last position
            pad_id=0,  # padding id, for pool="last"
            eos_id=-1,  # end-of-text id, for pool="eos"
            # FLIP's text masking: the fraction of positions each training caption drops
            # (padding first, then text at random; the pooled token stays); none at eval
            token_dropout=0.0,
            # with causal=False: False attends to padding like any token (SigLIP)
            mask_padding=True,
            # pool="final": the last position whatever it holds (SigLIP's padded captions)
            projection="linear",  # linear | linear_bias (SigLIP's text head) | none
            ln_eps=1e-5,  # every LayerNorm's epsilon (SigLIP: 1e-6)
        )
    )

    c.loss = ml_collections.ConfigDict()
    # softmax | dcl | sigmoid | cwcl | isogclr; 3+ modalities: symile | pairwise
    c.loss.kind = "softmax"
    c.loss.strategy = "gather"  # gather | grouped | ring
    c.loss.group_size = 1  # batch shards per group, for strategy "grouped"
    c.loss.ring_chunk = 1024  # strategy "ring": columns scored at once, memory O(b * chunk)
    c.loss.label_smoothing = 0.0  # 0.1 for ALIGN (kind "softmax" only)
    c.loss.cwcl_weights_from = None  # kind "cwcl": the frozen tower ("image" for LiT)
    c.loss.isogclr = None  # kind "isogclr": its group (presets.apply_isogclr)
    c.loss.alignment_weight = 0.0  # contrastive-gap terms (Fahim et al.)
    c.loss.uniformity_weight = 0.0
    c.loss.cross_uniformity_weight = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # adamw | lion | adafactor
    c.optim.lr = 2e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 1.0  # global-norm clipping; 0 disables
    c.optim.schedule = "cosine"  # cosine | rsqrt | constant_cooldown
    c.optim.warmup_steps = 50
    c.optim.cooldown_steps = None  # constant_cooldown only: steps of the linear cooldown
    c.optim.end_lr_factor = 0.01

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global
    c.train.steps = 1000
    # the data budget, as papers state it: set, the recipes (clipjax/recipes.py) make
    # train.steps follow samples_seen / batch_size; an explicit train.steps wins
    c.train.samples_seen = None
    c.train.log_every = 50
    c.train.accum_steps = 1  # micro-batches per step; the loss still contrasts the whole batch
    # keep the batch in host memory (pinned_host) and move one micro-batch at a time to the
    # chips in both GradCache passes: for batches whose pixels do not fit in HBM
    c.train.host_batch = False
    # a step whose loss, gradients or new parameters are not finite (checked every step,
    # before anything is checkpointed): "stop" exits 1 naming the step; "skip" keeps the
    # parameters and optimizer state and stops after max_skipped_in_a_row such steps
    c.train.on_nonfinite = "stop"
    c.train.max_skipped_in_a_row = 10
    # seconds one stage (data, step, eval, checkpoint) may last before the run dumps its
    # threads' stacks and exits 76 for a restart; 0: no limit (the first step compiles)
    c.train.stall_timeout = 1800.0
    # seconds after SIGTERM to reach a step boundary and save; then exit 75 without saving
    c.train.preemption_grace = 60.0
    # MFU (train/mfu) divides the architecture's FLOPs (clipjax/flops.py) by the chips'
    # peak: this many TFLOP/s per chip, or None for the data sheet of the device kind at
    # model.dtype (on CPUs an estimate from /proc/cpuinfo, named in the log)
    c.train.peak_tflops = None
    # (start, end): a profiler trace of those steps in workdir/profile (TensorBoard's
    # profile plugin opens it); (): none
    c.train.profile_steps = ()

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = (
        500  # steps between saves (the last step is always saved); 0: only the last
    )
    c.checkpoint.keep = 3  # most recent checkpoints kept; 0 keeps all
    c.checkpoint.keep_period = 0  # also keep every step divisible by this; 0: none
    c.checkpoint.async_save = True  # training continues while a checkpoint is written
    c.distributed = ml_collections.ConfigDict()  # used by multi-process runs only
    c.distributed.init_timeout = 300  # seconds for every process to join
    c.distributed.heartbeat_timeout = 60  # a process silent this long stops the run
    c.distributed.shutdown_timeout = 60  # seconds to wait for the others at exit
    c.init_from = ""  # params (only) from a checkpoint dir or an HF CLIP dir: fine-tuning, LiT
    c.init_parts = ()  # the top-level groups init_from loads, e.g. ("image",); (): all

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("layers", None),
    )

    # Evaluations (clipjax/evaluate/fields.py lists the fields each kind and source read):
    # kind zeroshot | retrieval | linear_probe, source digits | clip_benchmark |
    # image_folder | tfds. every > 0: at step 0, every N steps and at the end; 0: at the end.
    c.evals = ml_collections.ConfigDict()
    c.evals.digits = eval_entry("zeroshot", "digits")
    c.evals.digits_retrieval = eval_entry("retrieval", "digits")
    c.evals.digits_probe = eval_entry("linear_probe", "digits")

    if arg == "tiny":
        c.train.steps = 8
        c.train.batch_size = 32
        c.train.log_every = 4
        c.optim.warmup_steps = 2
        c.model.image.depth = 1
        c.model.text.depth = 1
        c.model.image.width = c.model.text.width = 64
        c.model.embed_dim = 64
        del c.evals["digits_retrieval"], c.evals["digits_probe"]  # tests run those themselves
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/default.py; expected 'tiny'")
    return c
