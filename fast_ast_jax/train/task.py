"""What differs between a padded and a packed (ElasticAST) training run, behind one small
interface (`Task`); the trainer (train.loop) is the same for both.

A padded run (config.model.name "ast", "cnn", ...: a padded kind of models.KINDS) trains
on clips padded or cropped to `frontend.target_frames` (data.pipeline) and evaluates
config.data.eval once. A packed run (config.model.name "elastic" with a `config.elastic`
block, configs/*elastic*.py) trains an ElasticAST on native-length, variable-hop clips
packed into rows (data.packed) and evaluates the hop x length table (`elastic.eval_hops_ms`
x `elastic.eval_max_frames`), every cell through one compiled program; periodic
evaluations use the first cell.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from fast_ast_jax import models
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import make_source
from fast_ast_jax.data.clips import fbank_moments
from fast_ast_jax.data.packed import PackedPipeline
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.train.elastic import pack_spec, table_pipelines


@dataclasses.dataclass
class Task:
    """The model, data and initialisation of one run.

    model: any kind of models.KINDS (padded or packed batches, `models.is_packed`);
        `forward.kind_of` turns a batch into per-clip logits, targets, mask (and teacher).
    train: training pipeline (`iterate(epoch=, index=)`, `steps(epoch)`, `bad_clips`).
    evals: (name, table key, pipeline) per evaluation; evals[0] is the periodic one
        (metrics "eval/<metric>"); with table keys, the end of training also evaluates
        every entry (rows {**key, **metrics}, logged as "eval/<name>/<metric>").
    example: a host batch with the model input's shapes (one clip / one row), for the
        `jax.eval_shape` state initialisation.
    """

    model: nn.Module
    train: Any
    evals: list[tuple[str, dict, Any]]
    example: dict[str, np.ndarray]

    @property
    def has_table(self) -> bool:
        return any(key for _, key, _ in self.evals)


def loss_kind(config, multi_label: bool) -> str:
    return config.loss or ("sigmoid" if multi_label else "softmax")


def _teacher_targets(config, multi_label: bool) -> dict[str, Any]:
    """Pipeline kwargs of the teacher predictions: at config.distill.tau, sigmoid or
    softmax as the loss (train.losses.kd_loss)."""
    return dict(teacher_tau=float(config.distill.tau),
                teacher_multilabel=loss_kind(config, multi_label) == "sigmoid")


def cache_key(config, split: str) -> str:
    """Identifies a split's source for the feature cache (config.data.cache_dir)."""
    return json.dumps([config.data.source, config.data[split].to_dict()], sort_keys=True)


def loading_kwargs(data) -> dict[str, Any]:
    """Pipeline kwargs from config.data: feature cache, bad-clip policy, workers (the same
    for padded and packed pipelines, in training, evaluate.py and distill dump)."""
    # configs saved in checkpoints before worker_count existed lack it
    return dict(cache=data.cache, cache_dir=data.cache_dir or None,
                on_bad_clip=data.on_bad_clip, worker_count=data.get("worker_count", 0))


def with_worker_count(config, workers: int | None):
    """`config` with config.data.worker_count = workers (a copy; None: `config` itself):
    evaluate.py and distill dump --workers, e.g. a checkpoint trained on a many-core host
    evaluated on a laptop."""
    if workers is None:
        return config
    if workers < 0:
        raise ValueError(f"workers={workers}: give a count >= 0 (0 = in-process)")
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.worker_count = workers
    return config


def with_auto_stats(config, *, workdir):
    """`config` with frontend.mean / std set to the training split's fbank statistics when
    config.data.auto_stats (a copy; otherwise `config` itself), so the run's FrontEnd, and
    with it the checkpoint, holds the numbers that inference then uses.

    Statistics: mean and std over every frame and bin of every training clip's
    un-normalised log-mel fbank (data.clips.fbank_moments), each host summing its share of
    the clips. Computed once: the numbers are kept in a JSON file in config.data.cache_dir
    (or `workdir` when that is "") named by the training source (`cache_key`) and the
    front-end fields that change the fbank, which a resumed run or a later run on the same
    data reads instead of computing them again.
    """
    if not config.data.auto_stats:
        return config
    fields = {k: v for k, v in config.frontend.to_dict().items()
              if k not in ("mean", "std", "on_device")}
    key = json.dumps([cache_key(config, "train"), fields], sort_keys=True)
    path = (Path(config.data.cache_dir or workdir)
            / f"frontend-stats-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json")
    cached = path.is_file()
    if jax.process_count() > 1:  # the hosts compute together, or none does
        cached = bool(multihost_utils.process_allgather(np.int32(cached)).min())
    if cached:
        stats = json.loads(path.read_text())
    else:
        frontend = FrontEnd.from_dict(config.frontend.to_dict())
        source = make_source(config.data.source, sample_rate=frontend.sample_rate,
                             **config.data.train.to_dict())
        check_labels(config, list(source.labels))  # before the fbank work
        moments = fbank_moments(source, frontend=frontend, on_bad_clip=config.data.on_bad_clip,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
        if jax.process_count() > 1:
            moments = np.asarray(multihost_utils.process_allgather(moments)).sum(0)
        cells, total, squares = (float(m) for m in moments)
        if cells == 0:
            raise ValueError(f"config.data.auto_stats=True: the training split "
                             f"{config.data.train.to_dict()!r} has no good clip to take "
                             "fbank statistics from")
        mean = total / cells
        stats = {"mean": mean, "std": math.sqrt(max(squares / cells - mean ** 2, 0.0)),
                 "clips": len(source), "cells": int(cells)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # hosts may share the directory
        tmp.write_text(json.dumps(stats, indent=1))
        os.replace(tmp, path)
    if jax.process_index() == 0:
        print(f"frontend statistics of the training set: mean={stats['mean']:.6g}, "
              f"std={stats['std']:.6g} ({path})")
    config = config.copy_and_resolve_references()
    config.frontend.update(mean=stats["mean"], std=stats["std"])
    return config


def build_pipeline(config, split: str, *, frontend: FrontEnd, train: bool,
                   source=None, teacher=None) -> Pipeline | None:
    """Padded pipeline over config.data.<split> (None if that split has no arguments);
    `teacher` (teacher_logits.TeacherLogits) adds each clip's teacher predictions at
    config.distill.tau to its batches ("teacher_probs")."""
    kwargs = config.data[split].to_dict()
    if not kwargs:
        return None
    source = source or make_source(config.data.source, sample_rate=frontend.sample_rate,
                                   **kwargs)
    batch = config.batch_size if train else (config.eval_batch_size or 2 * config.batch_size)
    return Pipeline(source, frontend=frontend, batch_size=batch, train=train,
                    seed=config.seed, augment=Augment(**config.augment) if train else Augment(),
                    cache_key=cache_key(config, split), teacher=teacher,
                    **_teacher_targets(config, source.multi_label),
                    waves=frontend.on_device, **loading_kwargs(config.data))


def check_labels(config, labels: list) -> None:
    """A kind that classifies needs label names; an unlabeled source (a folder CSV read
    with label_column="", a bare audio folder) trains only a "reconstruct" kind (mae)."""
    if not labels and models.config_kind(config).objective == "classify":
        raise ValueError(
            f"config.data.train={config.data.train.to_dict()!r}: the source has no labels "
            f"(0 classes), which model.name={models.config_name(config)!r} needs; pretrain "
            "on it with model.name='mae' (configs/test_pretrain.py), or give it labels")


def padded_task(config, *, frontend: FrontEnd, teacher=None) -> Task:
    source = make_source(config.data.source, sample_rate=frontend.sample_rate,
                         **config.data.train.to_dict())
    labels = list(source.labels)
    check_labels(config, labels)  # before the pipeline featurises anything
    train = build_pipeline(config, "train", frontend=frontend, train=True, teacher=teacher,
                           source=source)
    evals = build_pipeline(config, "eval", frontend=frontend, train=False)
    if evals is not None and list(evals.source.labels) != labels:
        raise ValueError(f"train labels {labels} differ from eval labels "
                         f"{list(evals.source.labels)}; give config.data.*.labels")
    model = models.from_config(config, num_classes=len(labels), frontend=frontend)
    example = {"x": np.zeros((1, frontend.target_frames, frontend.num_mel_bins), np.float32)}
    return Task(model=model, train=train, evals=[] if evals is None else [("", {}, evals)],
                example=example)


def packed_task(config, *, frontend: FrontEnd, teacher=None) -> Task:
    """ElasticAST on packed rows: config.elastic.rows rows per step (eval:
    config.eval_batch_size rows per step, 0 = elastic.rows), split over the hosts."""
    e, data = config.elastic, config.data
    if frontend.on_device:
        raise ValueError("config.frontend.on_device=True is not supported by packed "
                         "(ElasticAST) training yet: packs are built from host features; "
                         "set config.frontend.on_device=False")
    source = make_source(data.source, sample_rate=frontend.sample_rate, **data.train.to_dict())
    labels = list(source.labels)
    check_labels(config, labels)
    model = models.from_config(config, num_classes=len(labels), frontend=frontend)
    spec = pack_spec(config, model)
    train = PackedPipeline(source, frontend=frontend, spec=spec, train=True,
                           hops_ms=tuple(e.hops_ms), max_frames=int(e.max_frames),
                           token_dropout=float(e.token_dropout), seed=config.seed,
                           augment=Augment(**config.augment), teacher=teacher,
                           **_teacher_targets(config, source.multi_label),
                           cache_key=cache_key(config, "train"), **loading_kwargs(data))
    evals = []
    if data.eval.to_dict():
        eval_source = make_source(data.source, sample_rate=frontend.sample_rate,
                                  **data.eval.to_dict())
        if list(eval_source.labels) != labels:
            raise ValueError(f"train labels {labels} differ from eval labels "
                             f"{list(eval_source.labels)}; give config.data.*.labels")
        evals = packed_evals(config, "eval", source=eval_source, frontend=frontend,
                             spec=spec)
    example = {"patches": np.zeros((1, 8, spec.patch_dim), np.float32),
               "segment_ids": np.ones((1, 8), np.int32),
               "positions": np.zeros((1, 8, 2), np.int32),
               "slot_index": np.zeros((1, 1), np.int32)}
    return Task(model=model, train=train, evals=evals, example=example)


def packed_evals(config, split: str, *, source, frontend: FrontEnd, spec
                 ) -> list[tuple[str, dict, PackedPipeline]]:
    """The hop x length table of config.data.<split> (elastic.eval_hops_ms x
    eval_max_frames) as Task.evals: (name, key, pipeline), config.eval_batch_size rows per
    step (0 = spec.rows), the config's cache and workers. Training and evaluate.py both
    evaluate packed checkpoints through this."""
    e = config.elastic
    eval_spec = dataclasses.replace(spec, rows=config.get("eval_batch_size") or spec.rows)
    return [(f"hop{key['hop_ms']:g}_len{key['max_frames']}", key, pipeline)
            for key, pipeline in table_pipelines(
                source, frontend=frontend, spec=eval_spec, hops_ms=e.eval_hops_ms,
                max_frames=e.eval_max_frames, cache_key=cache_key(config, split),
                **loading_kwargs(config.data))]


def make_task(config, *, frontend: FrontEnd, teacher=None) -> Task:
    """The packed task for a packed model kind (models.KINDS, config.model.name), else the
    padded one."""
    if models.config_kind(config).packed:
        return packed_task(config, frontend=frontend, teacher=teacher)
    return padded_task(config, frontend=frontend, teacher=teacher)
