"""What differs between a padded and a packed (ElasticAST) training run, behind one small
interface (`Task`); the trainer (train.loop) is the same for both.

A padded run (config.model.name "ast", "cnn", ...: a padded kind of models.KINDS) trains
on clips padded or cropped to `frontend.target_frames` (data.pipeline) and evaluates
config.data.eval once. A packed run (config.model.name "elastic" with a `config.elastic`
block, configs/*elastic*.py) trains an ElasticAST on native-length, variable-hop clips
packed into rows (data.packed) and evaluates the hop x length table (`elastic.eval_hops_ms`
x `elastic.eval_max_frames`), every cell through one compiled program; periodic
evaluations use the first cell.

Every function here takes the run's description (train.spec.Run), not its config; the
pipeline builders also serve evaluate.py and distill dump (train.spec.checkpoint_run).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from fast_ast_jax import atomic, models
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.data import make_source
from fast_ast_jax.data.clips import fbank_moments
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.patches import Patching
from fast_ast_jax.train.elastic import table_pipelines
from fast_ast_jax.train.spec import Data, Elastic, Model, Run


@dataclasses.dataclass
class Task:
    """The model, data and initialisation of one run.

    run: the run as it trains (`with_auto_stats`: its front-end holds the training set's
        statistics when config.data.auto_stats asks for them), what the checkpoint stores.
    model: any kind of models.KINDS (padded or packed batches, `models.is_packed`);
        `forward.kind_of` turns a batch into per-clip logits, targets, mask (and teacher).
    loss: "softmax" or "sigmoid" (`loss_kind`).
    train: training pipeline (`iterate(epoch=, index=)`, `steps(epoch)`, `bad_clips`,
        `source`).
    evals: (name, table key, pipeline) per evaluation; evals[0] is the periodic one
        (metrics "eval/<metric>"); with table keys, the end of training also evaluates
        every entry (rows {**key, **metrics}, logged as "eval/<name>/<metric>").
    example: a host batch with the model input's shapes (one clip / one row), for the
        `jax.eval_shape` state initialisation.
    """

    run: Run
    model: nn.Module
    loss: str
    train: Any
    evals: list[tuple[str, dict, Any]]
    example: dict[str, np.ndarray]

    @property
    def has_table(self) -> bool:
        return any(key for _, key, _ in self.evals)


def loss_kind(loss: str, multi_label: bool) -> str:
    """config.loss, or by the data when it is "": sigmoid for multi-label, else softmax."""
    return loss or ("sigmoid" if multi_label else "softmax")


def _teacher_targets(run: Run, multi_label: bool) -> dict[str, Any]:
    """Pipeline kwargs of the teacher predictions: at config.distill.tau, sigmoid or
    softmax as the loss (train.losses.kd_loss)."""
    return dict(teacher_tau=float(run.distill.tau),
                teacher_multilabel=loss_kind(run.loss, multi_label) == "sigmoid")


def cache_key(run: Run, split: str) -> str:
    """Identifies a split's source for the feature cache (config.data.cache_dir)."""
    return json.dumps([run.data.source, run.data.split(split)], sort_keys=True)


def loading_kwargs(data: Data) -> dict[str, Any]:
    """Pipeline kwargs from config.data: feature cache, bad-clip policy, workers (the same
    for padded and packed pipelines, in training, evaluate.py and distill dump)."""
    return dict(cache=data.cache, cache_dir=data.cache_dir or None,
                on_bad_clip=data.on_bad_clip, worker_count=data.worker_count)


def split_source(run: Run, split: str):
    """The source of config.data.<split> (data.make_source) at the front-end's rate."""
    kwargs = run.data.split(split)
    if not kwargs:
        raise ValueError(f"config.data.{split} is empty: there are no clips to read; give "
                         "the source's arguments")
    return make_source(run.data.source, sample_rate=run.frontend.sample_rate, **kwargs)


def check_labels(run: Run, labels: list) -> None:
    """A kind that classifies needs label names; an unlabeled source (a folder CSV read
    with label_column="", a bare audio folder) trains only a "reconstruct" kind (mae)."""
    if not labels and models.KINDS[run.model.name].objective == "classify":
        raise ValueError(
            f"config.data.train={run.data.train!r}: the source has no labels "
            f"(0 classes), which model.name={run.model.name!r} needs; pretrain "
            "on it with model.name='mae' (configs/test_pretrain.py), or give it labels")


def with_auto_stats(run: Run, *, source, workdir) -> Run:
    """`run` with frontend.mean / std set to the fbank statistics of the training
    `source` (config.data.train's) when config.data.auto_stats (otherwise `run` itself),
    so the run's FrontEnd, and with it the checkpoint (its front-end and its config),
    holds the numbers that inference then uses.

    Statistics: mean and std over every frame and bin of every training clip's
    un-normalised log-mel fbank (data.clips.fbank_moments), each host summing its share of
    the clips. Computed once: the numbers are kept in a JSON file in config.data.cache_dir
    (or `workdir` when that is "") named by the training source (`cache_key`) and the
    front-end fields that change the fbank, which a resumed run or a later run on the same
    data reads instead of computing them again.
    """
    if not run.data.auto_stats:
        return run
    fields = {k: v for k, v in run.frontend.to_dict().items()
              if k not in ("mean", "std", "on_device")}
    key = json.dumps([cache_key(run, "train"), fields], sort_keys=True)
    path = (Path(run.data.cache_dir or workdir)
            / f"frontend-stats-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json")
    cached = path.is_file()
    if jax.process_count() > 1:  # the hosts compute together, or none does
        cached = bool(multihost_utils.process_allgather(np.int32(cached)).min())
    if cached:
        stats = json.loads(path.read_text())
    else:
        moments = fbank_moments(source, frontend=run.frontend,
                                on_bad_clip=run.data.on_bad_clip,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
        if jax.process_count() > 1:
            moments = np.asarray(multihost_utils.process_allgather(moments)).sum(0)
        cells, total, squares = (float(m) for m in moments)
        if cells == 0:
            raise ValueError(f"config.data.auto_stats=True: the training split "
                             f"{run.data.train!r} has no good clip to take "
                             "fbank statistics from")
        mean = total / cells
        stats = {"mean": mean, "std": math.sqrt(max(squares / cells - mean ** 2, 0.0)),
                 "clips": len(source), "cells": int(cells)}
        with atomic.replacing(path) as tmp:  # hosts may share the directory
            tmp.write_text(json.dumps(stats, indent=1))
    if jax.process_index() == 0:
        print(f"frontend statistics of the training set: mean={stats['mean']:.6g}, "
              f"std={stats['std']:.6g} ({path})")
    numbers = {"mean": stats["mean"], "std": stats["std"]}
    return dataclasses.replace(run, frontend=run.frontend.replace(**numbers),
                               config={**run.config,
                                       "frontend": {**run.config["frontend"], **numbers}})


def build_pipeline(run: Run, split: str, *, train: bool, source=None, teacher=None
                   ) -> Pipeline | None:
    """Padded pipeline over config.data.<split> (`source`, default `split_source`; None if
    that split has no arguments), features by the run's front-end; `teacher`
    (teacher_logits.TeacherLogits) adds each clip's teacher predictions at
    config.distill.tau to its batches ("teacher_probs")."""
    if not run.data.split(split):
        return None
    source = source or split_source(run, split)
    batch = run.batch_size if train else (run.eval_batch_size or 2 * run.batch_size)
    return Pipeline(source, frontend=run.frontend, batch_size=batch, train=train,
                    seed=run.seed, augment=run.augment if train else Augment(),
                    cache_key=cache_key(run, split), teacher=teacher,
                    **_teacher_targets(run, source.multi_label),
                    waves=run.frontend.on_device, **loading_kwargs(run.data))


def pack_spec(elastic: Elastic, model) -> PackSpec:
    """The rows of config.elastic for `model`'s patches (an ElasticAST)."""
    return PackSpec(rows=elastic.rows, max_tokens=elastic.max_tokens,
                    max_slots=elastic.max_slots,
                    patching=Patching(model.patch_size, model.fstride, model.tstride))


def packed_evals(run: Run, split: str, *, source, spec: PackSpec
                 ) -> list[tuple[str, dict, PackedPipeline]]:
    """The hop x length table of config.data.<split> (elastic.eval_hops_ms x
    eval_max_frames) as Task.evals: (name, key, pipeline), config.eval_batch_size rows per
    step (0 = spec.rows), the config's cache and workers. Training and evaluate.py both
    evaluate packed checkpoints through this."""
    e = run.elastic
    eval_spec = dataclasses.replace(spec, rows=run.eval_batch_size or spec.rows)
    return [(f"hop{key['hop_ms']:g}_len{key['max_frames']}", key, pipeline)
            for key, pipeline in table_pipelines(
                source, frontend=run.frontend, spec=eval_spec, hops_ms=e.eval_hops_ms,
                max_frames=e.eval_max_frames, cache_key=cache_key(run, split),
                **loading_kwargs(run.data))]


def build_model(model: Model, *, num_classes: int) -> nn.Module:
    """The model a run trains (models.from_fields of its kind and fields), for
    `num_classes` labels (a kind without a classifier, masked pretraining, takes none)."""
    fields = dict(model.fields)
    if "num_classes" in models.field_names(models.KINDS[model.name].cls):
        fields["num_classes"] = num_classes
    return models.from_fields(model.name, fields)


def make_task(run: Run, *, workdir, teacher=None) -> Task:
    """The task of `run`: the training source (read once: its labels are checked before
    anything else, and `with_auto_stats` takes the statistics from it), the evaluation
    source, the model (`build_model`), and the pipelines:
    packed for a packed model kind, else padded. `workdir` keeps the auto_stats numbers
    when config.data.cache_dir is ""."""
    source = split_source(run, "train")
    labels = list(source.labels)
    check_labels(run, labels)  # before any fbank work
    run = with_auto_stats(run, source=source, workdir=workdir)
    eval_source = split_source(run, "eval") if run.data.eval else None
    if eval_source is not None and list(eval_source.labels) != labels:
        raise ValueError(f"train labels {labels} differ from eval labels "
                         f"{list(eval_source.labels)}; give config.data.*.labels")
    model = build_model(run.model, num_classes=len(labels))
    build = _packed if models.is_packed(model) else _padded
    train, evals, example = build(run, model=model, source=source, eval_source=eval_source,
                                  teacher=teacher)
    return Task(run=run, model=model, loss=loss_kind(run.loss, source.multi_label),
                train=train, evals=evals, example=example)


def _padded(run: Run, *, model, source, eval_source, teacher):
    """Padded pipelines: clips cropped or padded to frontend.target_frames."""
    train = build_pipeline(run, "train", train=True, source=source, teacher=teacher)
    evals = [] if eval_source is None else [
        ("", {}, build_pipeline(run, "eval", train=False, source=eval_source))]
    f = run.frontend
    return train, evals, {"x": np.zeros((1, f.target_frames, f.num_mel_bins), np.float32)}


def _packed(run: Run, *, model, source, eval_source, teacher):
    """ElasticAST on packed rows: config.elastic.rows rows per step (eval:
    config.eval_batch_size rows per step, 0 = elastic.rows), split over the hosts."""
    e = run.elastic
    spec = pack_spec(e, model)
    train = PackedPipeline(source, frontend=run.frontend, spec=spec, train=True,
                           hops_ms=tuple(e.hops_ms), max_frames=int(e.max_frames),
                           token_dropout=float(e.token_dropout), seed=run.seed,
                           augment=run.augment, teacher=teacher,
                           **_teacher_targets(run, source.multi_label),
                           cache_key=cache_key(run, "train"), **loading_kwargs(run.data))
    evals = [] if eval_source is None else packed_evals(run, "eval", source=eval_source,
                                                        spec=spec)
    example = {"patches": np.zeros((1, 8, spec.patching.dim), np.float32),
               "segment_ids": np.ones((1, 8), np.int32),
               "positions": np.zeros((1, 8, 2), np.int32),
               "slot_index": np.zeros((1, 1), np.int32)}
    return train, evals, example
