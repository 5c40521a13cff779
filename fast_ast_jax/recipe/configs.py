"""The small-data recipe's stage configs: ordinary training ConfigDicts
(fast_ast_jax.train.config), one per stage, from a base derived from the data.

Base (every stage): AST-tiny width (192, 3 heads) with 6 blocks, 16x16 patches at stride 16,
no dropout, batch 32, the input length from the clips' durations (clips.target_frames), the
front-end normalised by the pretraining audio's fbank statistics (one mean / std for every
stage, so the fine-tuned encoder sees what it was pretrained on), features cached in
W/cache. Then per stage, the schedules measured on FSDD (docs/RESULTS.md):

- pretrain: masked-spectrogram pretraining (model.name "mae", mask 0.8, a 64 x 2 decoder,
  per-patch normalised targets, no augmentation), AdamW 5e-4 (beta2 0.95, weight decay
  0.05, 200 warmup steps), 100 epochs over the training clips and the unlabeled audio,
  without labels; its eval metric is the reconstruction loss on the eval clips.
- finetune: the AST from the pretrained encoder (init_from, fresh head), AdamW 1e-3
  (weight decay 0.05, 100 warmup steps), SpecAugment 16 bins / 8 frames, 30 epochs.
- student: the same AST with ToMe (the smallest constant r that needs STUDENT_MAC_RATIO x
  fewer MACs) trained with CMKD (lam 0.5, tau 1) from the fine-tuned model's logits on the
  training clips; initialised from the fine-tuned weights (10 epochs, AdamW 2e-4) or, with
  student_init="pretrain", from the pretrained encoder (the fine-tune's schedule).

`--set [STAGE.]FIELD=VALUE` overrides any config field of one stage, or of every stage
without a prefix (e.g. `finetune.num_epochs=50`, `model.depth=4`); num_steps is derived
from num_epochs and the clip counts unless set.
"""
from __future__ import annotations

import ast
import json
from typing import Sequence

import jax
import ml_collections

from fast_ast_jax import bench
from fast_ast_jax.recipe.clips import Clips
from fast_ast_jax.train.config import default_config
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from fast_ast_jax.train.validate import validate

STAGES = ("pretrain", "finetune", "student")
STUDENT_INITS = ("finetune", "pretrain")
STUDENT_MAC_RATIO = 1.5  # the student needs at least this many times fewer MACs
TEACHER_LOGITS = "teacher_train.npz"  # in the student's stage folder


def _base(*, workdir: str, target_frames: int, seed: int) -> ml_collections.ConfigDict:
    c = default_config()
    c.seed = seed
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 200
    c.frontend.target_frames = target_frames
    labeled = {"csv_path": f"{workdir}/data/labeled.csv", "audio_dir": f"{workdir}/data"}
    c.data.update(source="folder", cache_dir=f"{workdir}/cache")
    c.data.train = {**labeled, "select": {"split": "train"}}
    c.data.eval = {**labeled, "select": {"split": "eval"}}
    c.model.update(size="tiny", depth=6, fstride=16, tstride=16, dropout=0.0)
    return c


def _pretrain(c: ml_collections.ConfigDict, *, workdir: str) -> None:
    c.num_epochs = 100
    c.data.train = {"csv_path": f"{workdir}/data/pretrain.csv",
                    "audio_dir": f"{workdir}/data", "label_column": ""}
    c.data.eval = {**c.data.eval.to_dict(), "label_column": ""}
    c.model.update(name="mae", mask_ratio=0.8, decoder_width=64, decoder_depth=2,
                   decoder_heads=2, norm_pix_loss=True)
    c.optim.update(lr=5e-4, b2=0.95, weight_decay=0.05, warmup_steps=200)


def _finetune(c: ml_collections.ConfigDict, *, init_from: str) -> None:
    c.num_epochs = 30
    c.init_from = init_from
    # Mild masks: a short clip fills a fraction of the input (FSDD's digits ~45 of 128
    # frames), and a wide time mask erases most of it.
    c.augment.update(freqm=16, timem=8)
    c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05)


def _student(c: ml_collections.ConfigDict, *, workdir: str, init: str) -> None:
    _finetune(c, init_from=f"{workdir}/{init}")
    if init == "finetune":  # a short, gentle continuation of the teacher's own weights
        c.num_epochs = 10
        c.optim.update(lr=2e-4, warmup_steps=50)
    c.distill.update(teacher_logits=f"{workdir}/student/{TEACHER_LOGITS}", lam=0.5, tau=1.0)


def parse_override(item: str) -> tuple[str | None, list[str], object]:
    """"[STAGE.]a.b=VALUE" -> (stage or None, ["a", "b"], value); the value is a Python
    literal (3, 0.5, True, "(128, 2)") or, failing that, the string as typed."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ValueError(f"--set {item!r}: give [STAGE.]FIELD=VALUE, e.g. "
                         "finetune.num_epochs=50 or model.depth=4")
    stage = parts.pop(0) if parts[0] in STAGES else None
    if not parts:
        raise ValueError(f"--set {item!r}: name a config field after the stage")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = text.strip()
    return stage, parts, value


def _assign(c: ml_collections.ConfigDict, path: list[str], value, *, item: str) -> None:
    node = c
    try:
        for part in path[:-1]:
            node = node[part]
        node[path[-1]]  # noqa: B018  (an unknown field is an error, not a new one)
        node[path[-1]] = value
    except (KeyError, AttributeError) as e:
        raise ValueError(f"--set {item}: no config field {'.'.join(path)!r} (fields: "
                         "fast_ast_jax/train/config.py)") from e
    except TypeError as e:
        raise ValueError(f"--set {item}: {e}") from e


def _student_tome_r(c: ml_collections.ConfigDict, *, num_classes: int) -> int:
    model = build_model(read_config(c).model, num_classes=num_classes)
    try:
        return bench.tome_r_for(model, mac_ratio=STUDENT_MAC_RATIO)
    except ValueError as e:
        raise ValueError(f"student: {e}, or give its r: --set student.model.tome_r=N") from e


def stage_configs(clips: Clips, *, workdir: str, target_frames: int, seed: int = 0,
                  student: bool = True, student_init: str = "finetune",
                  overrides: Sequence[str] = (),
                  stats: tuple[float, float] | None = None
                  ) -> dict[str, ml_collections.ConfigDict]:
    """{stage: config} in stage order (STAGES; "student" only with `student`).

    Args:
        clips: the recipe's clips (counts set the steps; pretraining reads clips.pretrain).
        workdir: the recipe's workdir, as a string put into every path (stage folders,
            W/data, W/cache); a placeholder such as "{workdir}" gives configs to record.
        target_frames: the input length (clips.target_frames).
        seed: every stage's seed.
        student_init: "finetune" or "pretrain": the student's initial weights.
        overrides: "[STAGE.]FIELD=VALUE" items (`parse_override`), applied in order.
        stats: (mean, std) of the front-end; None leaves the defaults (records).
    Raises:
        ValueError: an unknown field or stage, a bad value, too few clips for a batch.
    """
    if student_init not in STUDENT_INITS:
        raise ValueError(f"--student_init {student_init!r}: use one of {STUDENT_INITS}")
    names = STAGES if student else STAGES[:2]
    configs = {}
    for name in names:
        c = _base(workdir=workdir, target_frames=target_frames, seed=seed)
        if name == "pretrain":
            _pretrain(c, workdir=workdir)
        elif name == "finetune":
            _finetune(c, init_from=f"{workdir}/pretrain")
        else:
            _student(c, workdir=workdir, init=student_init)
        c.lock()
        configs[name] = c
    touched = set()
    for item in overrides:
        stage, path, value = parse_override(item)
        if stage is not None and stage not in configs:
            raise ValueError(f"--set {item}: stage {stage!r} does not run (--no_student)")
        for name in [stage] if stage else configs:
            _assign(configs[name], path, value, item=item)
            touched.add((name, ".".join(path)))
    clip_counts = {"pretrain": len(clips.pretrain), "finetune": len(clips.names("train")),
                   "student": len(clips.names("train"))}
    for name, c in configs.items():
        n, batch = clip_counts[name], c.batch_size
        if batch > 0 and n < batch:
            what = "training clips" + (" and unlabeled clips" if name == "pretrain" else "")
            raise ValueError(f"{name}: {n} {what}, fewer than one batch of {batch}; add "
                             f"clips or lower the batch (--set batch_size={max(n, 1)})")
        if stats is not None:
            c.frontend.update(mean=float(stats[0]), std=float(stats[1]))
        validate(read_config(c), device_count=jax.device_count())
        if not c.num_steps:
            c.num_steps = c.num_epochs * (n // batch)
    if "student" in configs and not touched & {("student", "model.tome_r"),
                                               ("student", "model.tome_schedule")}:
        configs["student"].model.tome_r = _student_tome_r(
            configs["student"], num_classes=len(clips.labels))
    return configs


def record(config: ml_collections.ConfigDict) -> dict:
    """A stage config as recorded in W/recipe.json (JSON types; tuples become lists)."""
    return json.loads(config.to_json_best_effort())
