"""`dump`: a frozen teacher's logits for every clip of a data split, saved in the
teacher-logits format (fast_ast_jax.teacher_logits). Any checkpoint kind is a teacher: an AST or
the CNN teacher on the padded training input, an ElasticAST on packed native-length clips
(its config's first evaluation hop and training length cap).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from tqdm import tqdm

from fast_ast_jax import checkpoints
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.data import source_ids
from fast_ast_jax.data.packed import PackedPipeline
from fast_ast_jax.teacher_logits import TeacherLogits, TeacherLogitsError, load, save, summary
from fast_ast_jax.models import is_packed, model_fields, model_name
from fast_ast_jax.train.forward import packed_forward
from fast_ast_jax.train.spec import Run, checkpoint_run
from fast_ast_jax.train.task import (build_pipeline, cache_key, loading_kwargs, pack_spec,
                                     split_source)


def _padded_logits(bundle: Bundle, run: Run, split: str) -> tuple[list[str], np.ndarray]:
    pipeline = build_pipeline(run, split, train=False, source=split_source(run, split))
    _check_labels(bundle, pipeline.source, split)
    forward = jax.jit(functools.partial(bundle.model.apply, train=False))
    params = jax.device_put(bundle.params)
    chunks = []
    for batch, _ in tqdm(pipeline.iterate(), total=pipeline.steps_per_epoch,
                         desc=f"teacher logits ({split})"):
        logits = np.asarray(forward({"params": params}, batch["x"]))
        chunks.append(logits[batch["mask"] > 0])
    return source_ids(pipeline.source), np.concatenate(chunks)


def _packed_logits(bundle: Bundle, run: Run, split: str) -> tuple[list[str], np.ndarray]:
    """Per-clip logits of an ElasticAST, in source order (bad clips left out)."""
    source = split_source(run, split)
    _check_labels(bundle, source, split)
    e = run.elastic
    pipeline = PackedPipeline(source, frontend=run.frontend, spec=pack_spec(e, bundle.model),
                              train=False, hops_ms=(float(e.eval_hops_ms[0]),),
                              max_frames=int(e.max_frames), cache_key=cache_key(run, split),
                              **loading_kwargs(run.data))
    forward = jax.jit(lambda params, batch: packed_forward(bundle.model, params, batch,
                                                           train=False).logits)
    logits = np.full((len(source), len(bundle.labels)), np.nan, np.float32)
    for batch, _ in tqdm(pipeline.iterate(), total=pipeline.steps(0),
                         desc=f"teacher logits ({split})"):
        out = np.asarray(forward(bundle.params, batch))
        valid = batch["mask"].reshape(-1) > 0
        logits[batch["slot_index"].reshape(-1)[valid]] = out[valid]
    kept = ~np.isnan(logits).any(axis=1)
    return [i for i, k in zip(source_ids(source), kept) if k], logits[kept]


def _check_labels(bundle: Bundle, source, split: str) -> None:
    if tuple(source.labels) != bundle.labels:
        raise TeacherLogitsError(f"the teacher's labels {list(bundle.labels)} differ from the "
                                 f"{split} data's {list(source.labels)}")


def dump(checkpoint: str | os.PathLike, *, out: str | os.PathLike, config=None,
         split: str = "train", top_k: int | None = None, batch_size: int = 0,
         workers: int | None = None, echo=print) -> TeacherLogits:
    """Compute a frozen teacher's logits for every clip of a data split and save them.

    The checkpoint (any kind: CNN teacher, AST, ElasticAST) is run deterministically
    (train=False, no augmentation) on features made by its own front-end.

    Args:
        checkpoint: training workdir or its checkpoints/ directory.
        out: output .npz path.
        config: data config (default: the checkpoint's own); config.data.<split> is used.
        split: "train" (what a student trains on) or "eval".
        top_k: keep only the k largest logits per clip (None = dense).
        batch_size: clips per forward pass of a padded model (0 = the config's eval batch
            size); a packed model uses its config.elastic rows.
        workers: loader worker processes (None: the config's data.worker_count).
    Returns:
        the saved file, loaded back (validated).
    """
    bundle = checkpoints.load_classifier(checkpoint)
    run = checkpoint_run(bundle, config, workers=workers)
    if batch_size:
        run = dataclasses.replace(run, eval_batch_size=batch_size)
    packed = is_packed(bundle.model)
    ids, logits = (_packed_logits if packed else _padded_logits)(bundle, run, split)
    teacher = {"model_class": model_name(bundle.model), "model": model_fields(bundle.model),
               "checkpoint": str(checkpoints.checkpoint_dir(checkpoint).absolute()),
               "step": bundle.step, "split": split, "loss": bundle.loss,
               "frontend": bundle.frontend.to_dict()}
    save(out, ids=ids, logits=logits, labels=bundle.labels, teacher=teacher, top_k=top_k)
    result = load(out)
    if echo:
        echo(summary(result, top_k=top_k))
    return result
