"""Checks of a run's description before training: one-line errors naming the config field,
its value and the fix.

Unknown keys and wrong types are caught by ml_collections itself when the config is locked
(train.py locks it: `--config.batch_szie=8` -> "Key 'batch_szie' does not exist ...",
`--config.batch_size=abc` -> a parse error naming the flag); reading the config catches
what cannot be read (train.spec.read_config); this module checks values that have the
right type but cannot work, so a run fails in its first second rather than after
featurising the data or at the first evaluation. No model is built.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from fast_ast_jax.audio.augment import check_no_mixup
from fast_ast_jax.data import SOURCES
from fast_ast_jax.data.clips import BAD_CLIP_POLICIES
from fast_ast_jax.models.ast import (AST, PLAN_FIELDS, SCHEDULE_FIELDS, reduction_schedule,
                                     token_plan)
from fast_ast_jax.models.elastic import POOLS, POS_EMBEDDINGS
from fast_ast_jax.patches import grid_shape, patch_shape
from fast_ast_jax.train.spec import Model, Run, model_fields

_CHOICES = {
    "loss": ("", "softmax", "sigmoid"),
    "param_sharding": ("replicate", "fsdp"),
    "data.on_bad_clip": BAD_CLIP_POLICIES,
    "data.source": SOURCES,
    "model.dtype": ("float32", "bfloat16"),
    "optim.name": ("adamw", "adam"),
    "optim.schedule": ("cosine", "step", "constant"),
}


def value(run: Run, field: str) -> Any:
    """The value of config field `field` ("optim.lr", "model.width") in `run`: the
    records mirror the config's blocks; config.model is the model's settings."""
    out: Any = run
    for part in field.split("."):
        if isinstance(out, Model):
            out = out.settings
        out = out[part] if isinstance(out, Mapping) else getattr(out, part)
    return out


def require(run: Run, ok: bool, field: str, rule: str) -> None:
    """Raise ValueError("config.<field>=<value>: <rule>") unless `ok`: the one form of a
    config error."""
    if not ok:
        raise ValueError(f"config.{field}={value(run, field)!r}: {rule}")


def validate(run: Run, *, device_count: int) -> None:
    """Raise ValueError("config.<field>=<value> ...") for the first impossible value.

    run: the run's description (train.spec.read_config);
    device_count: jax.device_count() of the run (global, all hosts).
    """
    need = lambda ok, field, rule: require(run, ok, field, rule)
    for field, choices in _CHOICES.items():
        need(value(run, field) in choices, field, f"use one of {tuple(choices)}")
    # Packed runs batch rows (config.elastic.rows; eval: eval_batch_size rows, 0 = rows).
    if run.elastic is not None:
        need(run.elastic.rows % device_count == 0, "elastic.rows",
             f"must be a multiple of the {device_count} devices (the rows are split over "
             "them)")
    else:
        need(run.batch_size > 0, "batch_size", "must be > 0")
        need(run.batch_size % device_count == 0, "batch_size",
             f"must be a multiple of the {device_count} devices (the batch is split over "
             "them)")
    need(run.eval_batch_size >= 0, "eval_batch_size",
         "must be >= 0 (0 = elastic.rows in packed runs, else 2 x batch_size)")
    need(run.eval_batch_size % device_count == 0, "eval_batch_size",
         f"must be a multiple of the {device_count} devices (the batch is split over them)")
    need(run.num_steps >= 0, "num_steps", "must be >= 0 (0 = use num_epochs)")
    need(run.num_steps > 0 or run.num_epochs > 0, "num_epochs",
         "must be > 0 when num_steps is 0")
    need(run.data.worker_count >= 0, "data.worker_count",
         "must be >= 0 (0 = build batches in this process)")
    need(run.log_every > 0, "log_every", "must be > 0")
    need(run.eval_every >= 0, "eval_every", "must be >= 0 (0 = at the end only)")
    need(run.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = at the end)")
    need(run.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
    need(run.max_consecutive_nonfinite >= 1, "max_consecutive_nonfinite", "must be >= 1")
    opt = run.optim
    need(opt.lr >= 0, "optim.lr", "a learning rate must be >= 0")
    need(0 <= opt.b1 < 1, "optim.b1", "must lie in [0, 1)")
    need(0 <= opt.b2 < 1, "optim.b2", "must lie in [0, 1)")
    need(opt.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(opt.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 = off)")
    need(opt.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(opt.decay_rate > 0, "optim.decay_rate", "must be > 0")
    m = run.model.settings
    need(0 <= m["dropout"] < 1, "model.dropout", "must lie in [0, 1)")
    need(0 < m["prune_keep_rate"] <= 1, "model.prune_keep_rate",
         "a keep rate must lie in (0, 1] (1 = no pruning)")
    for name in ("width", "depth", "num_heads", "mlp_dim", "fstride", "tstride"):
        need(m[name] is None or m[name] > 0, f"model.{name}", "must be > 0")
    check = KIND_CHECKS.get(run.model.name)
    if check is not None:
        check(run)


def check_patch(run: Run) -> tuple[int, int]:
    """config.model.patch_size and the strides: a patch that fits the front-end's input
    (frontend.num_mel_bins x target_frames) and strides no larger than the patch (a larger
    one would skip the bins or frames between patches). Returns the patch's (frequency
    bins, time frames)."""
    m, frontend = run.model.settings, run.frontend
    try:
        ph, pw = patch_shape(m["patch_size"])
    except ValueError as e:
        raise ValueError(f"config.model.{e}") from None
    need = lambda ok, field, rule: require(run, ok, field, rule)
    need(ph <= frontend.num_mel_bins, "model.patch_size",
         f"a patch of {ph} mel bins is taller than the input's frontend.num_mel_bins="
         f"{frontend.num_mel_bins}; use at most that many")
    need(pw <= frontend.target_frames, "model.patch_size",
         f"a patch of {pw} frames is longer than the input's frontend.target_frames="
         f"{frontend.target_frames}")
    for field, side, what in (("fstride", ph, "mel bins"), ("tstride", pw, "frames")):
        need(m[field] <= side, f"model.{field}",
             f"is larger than the patch's {side} {what} (model.patch_size={m['patch_size']}), "
             f"which would skip the {what} between patches; use {field} <= {side}")
    return ph, pw


def check_encoder(run: Run) -> tuple[int, int]:
    """config.model read as an AST (the AST itself, or the AST whose fields an ElasticAST
    or a masked-pretraining encoder shares): the patch, then the token plan (strides,
    heads, ToMe r, TopK layers) for the front-end's input, from the fields alone; warns
    when ToMe's r is clamped in the first block. Returns the patch (`check_patch`)."""
    patch = check_patch(run)
    m, frontend = run.model.settings, run.frontend
    fields = model_fields("ast", m, frontend=frontend)
    fields.update({k: getattr(AST, k) for k in PLAN_FIELDS if k not in fields})
    try:
        if fields["width"] % fields["num_heads"]:
            raise ValueError(f"config.model.width={fields['width']} is not divisible by "
                             f"num_heads={fields['num_heads']}")
        grid = grid_shape(**{k: fields[k] for k in ("frames", "num_mel_bins", "patch_size",
                                                    "fstride", "tstride")})
        plan = token_plan(grid=grid, **{k: fields[k] for k in PLAN_FIELDS})
        first = reduction_schedule(name="AST", **{k: fields[k] for k in SCHEDULE_FIELDS})[0][0]
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("config.") else f"config.model: {msg}") from None
    f_dim, t_dim = grid
    most = (f_dim * t_dim) // 2
    if plan and first > most:  # ToMe clamps r per block (as the reference): legal, suspicious
        field = "tome_schedule" if m.get("tome_schedule") else "tome_r"
        warnings.warn(f"config.model.{field}={fields['tome_r']!r}: the first block can "
                      f"merge at most {most} of its {f_dim * t_dim} patch tokens "
                      f"(frames={frontend.target_frames}, fstride={fields['fstride']}, "
                      f"tstride={fields['tstride']}); r is clamped to that", stacklevel=3)
    return patch


def check_elastic(run: Run) -> None:
    """The packed model's fields (config.model as an AST, config.elastic): shapes, hops,
    and that the longest clip fits a row; features made on the host."""
    patch = check_encoder(run)
    e, m = run.elastic, run.model.settings
    need = lambda ok, field, rule: require(run, ok, field, rule)
    if run.frontend.on_device:
        raise ValueError("config.frontend.on_device=True is not supported by packed "
                         "(ElasticAST) training yet: packs are built from host features; "
                         "set config.frontend.on_device=False")
    need(not m["prune_fuse"], "model.prune_fuse", "is not supported with packing (a fused "
         "token per sample has no static place in a row)")
    check_no_mixup(run.augment.mixup, field="config.augment.mixup")
    for name in ("rows", "max_tokens", "max_slots"):
        need(getattr(e, name) >= 1, f"elastic.{name}", "must be >= 1")
    need(0 <= e.token_dropout < 1, "elastic.token_dropout", "must lie in [0, 1)")
    need(e.pos_embedding in POS_EMBEDDINGS, "elastic.pos_embedding",
         "use 'factorised' or 'ast'")
    need(e.pool in POOLS, "elastic.pool", "use 'attn' or 'mean'")
    for name in ("hops_ms", "eval_hops_ms"):
        hops = getattr(e, name)
        need(len(hops) > 0 and all(h > 0 for h in hops), f"elastic.{name}",
             "give one or more frame shifts > 0 ms")
    need(len(e.eval_max_frames) > 0, "elastic.eval_max_frames", "give one or more caps")
    for name, caps, keep in (("max_frames", [e.max_frames], 1.0 - e.token_dropout),
                             ("eval_max_frames", list(e.eval_max_frames), 1.0)):
        for frames in caps:
            need(frames >= patch[1], f"elastic.{name}", f"every cap must be >= "
                 f"{patch[1]} frames (one patch)")
            f_dim, t_dim = grid_shape(frames=frames, num_mel_bins=run.frontend.num_mel_bins,
                                      patch_size=patch, fstride=m["fstride"],
                                      tstride=m["tstride"])
            tokens = max(1, int(f_dim * t_dim * keep))
            need(tokens <= e.max_tokens, f"elastic.{name}",
                 f"a {frames}-frame clip is {tokens} tokens, more than a row holds "
                 f"(elastic.max_tokens={e.max_tokens}); raise max_tokens or lower the cap")


def check_pretraining(run: Run) -> None:
    """Masked pretraining: the encoder's fields as an AST's, the masking and decoder, and
    what it cannot do (token reduction, dropout, distillation: there are no logits)."""
    check_encoder(run)
    m = run.model.settings
    need = lambda ok, field, rule: require(run, ok, field, rule)
    need(0 < m["mask_ratio"] < 1, "model.mask_ratio",
         "must lie in (0, 1) (Audio-MAE: 0.75-0.8)")
    for name in ("decoder_width", "decoder_depth", "decoder_heads"):
        need(m[name] >= 1, f"model.{name}", "must be >= 1")
    need(m["decoder_width"] % m["decoder_heads"] == 0, "model.decoder_width",
         f"must be divisible by model.decoder_heads={m['decoder_heads']}")
    reduction = "token reduction is for the fine-tuned model: set it there, not in pretraining"
    need(not m["tome_r"], "model.tome_r", reduction)
    need(not m.get("tome_schedule"), "model.tome_schedule", reduction)
    need(m["prune_keep_rate"] == 1.0, "model.prune_keep_rate", reduction)
    need(m["dropout"] == 0.0, "model.dropout", "the MAE encoder has no dropout; set 0")
    need(not run.distill.teacher_logits, "distill.teacher_logits",
         "masked pretraining has no logits to distil into; distil when fine-tuning "
         "(--config.init_from=<this pretraining workdir>)")


# The kinds' own checks (models.KINDS names); a kind without an entry has none.
KIND_CHECKS = {"ast": check_encoder, "elastic": check_elastic, "mae": check_pretraining}
