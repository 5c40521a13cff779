"""Config checks before training: one-line errors naming the field, its value and the fix.

Unknown keys and wrong types are caught by ml_collections itself when the config is locked
(train.py locks it: `--config.batch_szie=8` -> "Key 'batch_szie' does not exist ...",
`--config.batch_size=abc` -> a parse error naming the flag); this module checks values
that have the right type but cannot work, so a run fails in its first second rather than
after featurising the data or at the first evaluation.
"""
from __future__ import annotations

import warnings

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.pipeline import BAD_CLIP_POLICIES
from fast_ast_jax.models.ast import AST, SIZES, create_ast, grid_shape, model_overrides

_CHOICES = {
    "loss": ("", "softmax", "sigmoid"),
    "param_sharding": ("replicate", "fsdp"),
    "data.on_bad_clip": BAD_CLIP_POLICIES,
    "data.source": ("synthetic", "folder", "tfds"),
    "model.dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "adam"),
    "optim.schedule": ("cosine", "step", "constant"),
}


def _get(config, field: str):
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def validate_config(config, *, device_count: int) -> None:
    """Raise ValueError("config.<field>=<value> ...") for the first impossible value.

    config: the training ConfigDict (fast_ast_jax.train.config.default_config layout);
    device_count: jax.device_count() of the run (global, all hosts).
    """
    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"config.{field}={_get(config, field)!r}: {rule}")

    for field, choices in _CHOICES.items():
        need(_get(config, field) in choices, field, f"use one of {choices}")
    need(config.model.size in SIZES, "model.size", f"use one of {sorted(SIZES)}")
    # Packed runs batch rows (config.elastic.rows; eval: eval_batch_size rows, 0 = rows).
    packed = "elastic" in config
    if not packed:
        need(config.batch_size > 0, "batch_size", "must be > 0")
        need(config.batch_size % device_count == 0, "batch_size",
             f"must be a multiple of the {device_count} devices (the batch is split over "
             "them)")
    need(config.eval_batch_size >= 0, "eval_batch_size",
         "must be >= 0 (0 = elastic.rows in packed runs, else 2 x batch_size)")
    need(config.eval_batch_size % device_count == 0, "eval_batch_size",
         f"must be a multiple of the {device_count} devices (the batch is split over them)")
    need(config.num_steps >= 0, "num_steps", "must be >= 0 (0 = use num_epochs)")
    need(config.num_steps > 0 or config.num_epochs > 0, "num_epochs",
         "must be > 0 when num_steps is 0")
    need(config.data.worker_count >= 0, "data.worker_count",
         "must be >= 0 (0 = build batches in this process)")
    need(config.log_every > 0, "log_every", "must be > 0")
    need(config.eval_every >= 0, "eval_every", "must be >= 0 (0 = at the end only)")
    need(config.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = at the end)")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    need(config.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite", "must be >= 1")
    opt = config.optim
    need(opt.lr >= 0, "optim.lr", "a learning rate must be >= 0")
    need(0 <= opt.b1 < 1, "optim.b1", "must lie in [0, 1)")
    need(0 <= opt.b2 < 1, "optim.b2", "must lie in [0, 1)")
    need(opt.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(opt.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 = off)")
    need(opt.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(opt.decay_rate > 0, "optim.decay_rate", "must be > 0")
    m = config.model
    need(0 <= m.dropout < 1, "model.dropout", "must lie in [0, 1)")
    need(0 < m.prune_keep_rate <= 1, "model.prune_keep_rate",
         "a keep rate must lie in (0, 1] (1 = no pruning)")
    for name in ("width", "depth", "num_heads", "mlp_dim", "fstride", "tstride"):
        value = m[name]
        need(value is None or value > 0, f"model.{name}", "must be > 0")
    try:
        frontend = FrontEnd.from_dict(config.frontend.to_dict())
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.frontend: {e}") from None
    _check_model(config, frontend)
    if packed:
        _check_elastic(config, frontend, need, device_count=device_count)


def _check_elastic(config, frontend: FrontEnd, need, *, device_count: int) -> None:
    """The packed (ElasticAST) fields: shapes, hops, and that the longest clip fits a row."""
    e, m = config.elastic, config.model
    need(m.get("name", "ast") == "ast", "model.name", "packed training needs 'ast'")
    need(not m.prune_fuse, "model.prune_fuse", "is not supported with packing")
    need(config.augment.mixup == 0, "augment.mixup",
         "must be 0 with packing (clips of different lengths and hops cannot be mixed)")
    for name in ("rows", "max_tokens", "max_slots"):
        need(e[name] >= 1, f"elastic.{name}", "must be >= 1")
    need(e.rows % device_count == 0, "elastic.rows",
         f"must be a multiple of the {device_count} devices (the rows are split over them)")
    need(0 <= e.token_dropout < 1, "elastic.token_dropout", "must lie in [0, 1)")
    need(e.pos_embedding in ("factorised", "ast"), "elastic.pos_embedding",
         "use 'factorised' or 'ast'")
    need(e.pool in ("attn", "mean"), "elastic.pool", "use 'attn' or 'mean'")
    for name in ("hops_ms", "eval_hops_ms"):
        need(len(e[name]) > 0 and all(h > 0 for h in e[name]), f"elastic.{name}",
             "give one or more frame shifts > 0 ms")
    need(len(e.eval_max_frames) > 0, "elastic.eval_max_frames", "give one or more caps")
    patch = AST.patch_size
    for name, caps, keep in (("max_frames", [e.max_frames], 1.0 - e.token_dropout),
                             ("eval_max_frames", list(e.eval_max_frames), 1.0)):
        for frames in caps:
            need(frames >= patch, f"elastic.{name}", f"every cap must be >= {patch} frames "
                 "(one patch)")
            f_dim, t_dim = grid_shape(frames=frames, num_mel_bins=frontend.num_mel_bins,
                                      patch_size=patch, fstride=m.fstride, tstride=m.tstride)
            tokens = max(1, int(f_dim * t_dim * keep))
            need(tokens <= e.max_tokens, f"elastic.{name}",
                 f"a {frames}-frame clip is {tokens} tokens, more than a row holds "
                 f"(elastic.max_tokens={e.max_tokens}); raise max_tokens or lower the cap")


def _check_model(config, frontend: FrontEnd) -> None:
    """Build the model (no params) and check its token plan: strides, heads, ToMe r."""
    if config.model.get("name", "ast") != "ast":
        return  # the CNN teacher has no tokens to check
    try:
        fields = model_overrides(config.model)
        model = create_ast(config.model.size, num_classes=2,
                           num_mel_bins=frontend.num_mel_bins, frames=frontend.target_frames,
                           **fields)
        if model.width % model.num_heads:
            raise ValueError(f"config.model.width={model.width} is not divisible by "
                             f"num_heads={model.num_heads}")
        plan = model.token_plan()
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("config.") else f"config.model: {msg}") from None
    f_dim, t_dim = model.grid()
    most = (f_dim * t_dim) // 2
    first = model.r_schedule()[0] if plan else 0
    if first > most:  # ToMe clamps r per block (reference semantics): legal, but suspicious
        field = "tome_schedule" if config.model.get("tome_schedule") else "tome_r"
        warnings.warn(f"config.model.{field}={fields['tome_r']!r}: the first block can "
                      f"merge at most {most} of its {f_dim * t_dim} patch tokens "
                      f"(frames={frontend.target_frames}, fstride={model.fstride}, "
                      f"tstride={model.tstride}); r is clamped to that", stacklevel=3)
