"""Config checks before training: one-line errors naming the field, its value and the fix.

Unknown keys and wrong types are caught by ml_collections itself when the config is locked
(train.py locks it: `--config.batch_szie=8` -> "Key 'batch_szie' does not exist ...",
`--config.batch_size=abc` -> a parse error naming the flag); this module checks values
that have the right type but cannot work, so a run fails in its first second rather than
after featurising the data or at the first evaluation.
"""
from __future__ import annotations

from fast_ast_jax import models
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import SOURCES
from fast_ast_jax.data.clips import BAD_CLIP_POLICIES
from fast_ast_jax.models.ast import SIZES, require

_CHOICES = {
    "loss": ("", "softmax", "sigmoid"),
    "param_sharding": ("replicate", "fsdp"),
    "data.on_bad_clip": BAD_CLIP_POLICIES,
    "data.source": SOURCES,
    "model.dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "adam"),
    "optim.schedule": ("cosine", "step", "constant"),
}


def validate_config(config, *, device_count: int) -> None:
    """Raise ValueError("config.<field>=<value> ...") for the first impossible value.

    config: the training ConfigDict (fast_ast_jax.train.config.default_config layout);
    device_count: jax.device_count() of the run (global, all hosts).
    """
    need = lambda ok, field, rule: require(config, ok, field, rule)
    for field, choices in _CHOICES.items():
        value = config
        for part in field.split("."):
            value = value[part]
        need(value in choices, field, f"use one of {tuple(choices)}")
    need(config.model.size in SIZES, "model.size", f"use one of {sorted(SIZES)}")
    kind = models.config_kind(config)
    # Packed runs batch rows (config.elastic.rows; eval: eval_batch_size rows, 0 = rows).
    if kind.packed:
        need(config.elastic.rows % device_count == 0, "elastic.rows",
             f"must be a multiple of the {device_count} devices (the rows are split over "
             "them)")
    else:
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
    if kind.check_config is not None:
        kind.check_config(config, frontend)
