"""The default training config; recipe files in configs/ start from it and override fields.

Every field exists here so that `--config.<key>=<value>` overrides are checked against it
(train.py locks the config: a typo is an error, not a silently new field).
"""
from __future__ import annotations

import ml_collections

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.train import keep_rate


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 32  # global, over all devices and hosts
    c.num_epochs = 10
    c.num_steps = 0  # > 0 overrides num_epochs
    c.loss = ""  # "softmax" | "sigmoid"; "" = sigmoid for multi-label data, else softmax
    c.log_every = 50
    c.eval_every = 0  # steps; 0 = at the end only
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.init_from = ""  # pretrained weights (fast_ast_jax.convert.load)
    c.distributed = False  # jax.distributed.initialize() for multi-host runs
    c.param_sharding = "replicate"  # or "fsdp" (split large params over the data axis)
    c.eval_batch_size = 0  # 0 = 2 x batch_size (as AST)
    # A step with a non-finite loss or gradient is skipped (no update, counted in
    # train/skipped_nonfinite); this many in a row stop the run.
    c.max_consecutive_nonfinite = 10

    c.frontend = ml_collections.ConfigDict(FrontEnd().to_dict())

    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic" | "folder" | "tfds"
    # Constructor arguments of the train / eval sources (fast_ast_jax.data); an eval
    # source with no arguments means no evaluation.
    c.data.train = ml_collections.ConfigDict({"num_examples": 512, "split": "train"})
    c.data.eval = ml_collections.ConfigDict({"num_examples": 128, "split": "eval"})
    c.data.cache = True  # keep features in memory
    c.data.cache_dir = ""  # also store them as .npz there ("" = memory only)
    # True: frontend.mean / std are replaced by the mean and std of the training split's
    # un-normalised fbank, computed once before training (kept in a JSON file in cache_dir,
    # or the workdir) and saved in the checkpoint's front-end (train.task.with_auto_stats).
    c.data.auto_stats = False
    # A clip that fails to load (fast_ast_jax.audio.AudioError): "skip" (replaced by the next
    # good clip in training, masked out in eval; counted in */bad_clips) or "fail".
    c.data.on_bad_clip = "skip"
    # Processes that decode clips and build batches (grain workers, fast_ast_jax.data.loader);
    # 0 = in this process, one thread ahead. Worth it with data.cache off (e.g. AudioSet).
    c.data.worker_count = 0

    c.augment = ml_collections.ConfigDict(
        dict(freqm=0, timem=0, mixup=0.0, mixup_alpha=10.0, noise=False))

    c.model = ml_collections.ConfigDict()
    c.model.name = "ast"  # fast_ast_jax.models.KINDS: "ast", "elastic" (packed rows: needs
    # a c.elastic block, train.elastic.elastic_defaults()), "cnn" (fields in c.model.cnn)
    # or "mae" (masked pretraining of the AST encoder these fields size, no labels needed:
    # fields below; docs/PRETRAIN.md)
    c.model.size = "tiny"  # fast_ast_jax.models.SIZES; None fields below keep the size's
    c.model.width = ml_collections.config_dict.placeholder(int)
    c.model.depth = ml_collections.config_dict.placeholder(int)
    c.model.num_heads = ml_collections.config_dict.placeholder(int)
    c.model.mlp_dim = ml_collections.config_dict.placeholder(int)
    # The conv patch as (frequency bins, time frames) and its strides. AST's 16x16 with
    # overlapping strides (10) is what pretrained AST / HF / timm weights have; (128, 2)
    # with fstride=128, tstride=2 is SSAST's frame patch (all mel bins x 2 frames, one
    # token per 2-frame column: best for speech in SSAST), for models trained from scratch
    # or pretrained here (model.name "mae"). From the command line:
    # --config.model.patch_size="(128, 2)" --config.model.fstride=128 --config.model.tstride=2
    # (--config.model.patch_size=16 is a 16x16 square). Strides must not exceed the patch's
    # sides (train.validate).
    c.model.patch_size = (16, 16)
    c.model.fstride = 10
    c.model.tstride = 10
    c.model.dist_token = True
    c.model.dropout = 0.0
    c.model.dtype = "float32"  # "bfloat16" computes in bf16 (params stay float32)
    # Token reduction (fast_ast_jax.models.tome / prune); 0 and 1.0 are off. ToMe merges
    # per block: tome_r (int, the same r in every block) or tome_schedule (string, set one
    # of the two): "ramp:R,INFLECTION" (ToMe's linear ramp of mean R, INFLECTION in
    # [-1, 1]) or "blocks:R0,R1,..." (per block, missing blocks 0); from a config file or
    # e.g. --config.model.tome_schedule=ramp:16,-1.0 (fast_ast_jax.models.tome.parse_schedule).
    # The last block never merges or prunes, whatever they say (models.ast.reduction_schedule).
    c.model.tome_r = 0
    c.model.tome_schedule = ""
    c.model.tome_prop_attn = True
    c.model.prune_keep_rate = 1.0
    c.model.prune_layers = (3, 6, 9)
    c.model.prune_fuse = False
    # TopK training schedule (fast_ast_jax.train.keep_rate): keep rate 1 until start_epoch,
    # half cosine down to model.prune_keep_rate at end_epoch, rounded up to num_rates
    # distinct rates (one compiled train step each). end_epoch = 0: the final rate from
    # step 0. Evaluation always uses model.prune_keep_rate.
    c.keep_rate_schedule = keep_rate.defaults()
    # Masked pretraining (model.name "mae", fast_ast_jax.models.mae.MAE; ignored by the
    # other kinds): the fraction of patches hidden from the encoder, the light decoder
    # (width x depth blocks, heads), per-patch normalised targets.
    c.model.mask_ratio = 0.8
    c.model.decoder_width = 128
    c.model.decoder_depth = 2
    c.model.decoder_heads = 4
    c.model.norm_pix_loss = True
    # CNN teacher (fast_ast_jax.models.cnn; used when name = "cnn", with model.dtype).
    c.model.cnn = ml_collections.ConfigDict(dict(
        stages="small", stem_channels=32, feature_dim=256, pooling="attention", dropout=0.2))

    # Cross-model knowledge distillation (CMKD) from precomputed teacher logits
    # (`python -m fast_ast_jax.distill dump`): loss = lam * task + (1 - lam) * kd(tau).
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher_logits = ""  # .npz path; "" = no distillation
    c.distill.lam = 0.5  # weight of the ground-truth term (CMKD: 0.5)
    c.distill.tau = 1.0  # temperature on the teacher logits only

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"  # "adamw" | "adam"
    c.optim.lr = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 1.0  # 0 = off
    c.optim.warmup_steps = 0
    c.optim.schedule = "cosine"  # "cosine" | "step" | "constant"
    c.optim.decay_start_epoch = 5  # "step": AST's MultiStepLR(range(start, ., step), rate)
    c.optim.decay_epochs = 1
    c.optim.decay_rate = 0.85
    return c


def recipe(path, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of the config file at `path` (for recipes building on another one,
    e.g. `recipe(Path(__file__).with_name("fsdd.py"), "official")`)."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
