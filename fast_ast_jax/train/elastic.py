"""ElasticAST recipes: the `config.elastic` block, the packed model and pack spec it
builds, and the hop x length evaluation table.

Packed runs train through the one trainer (`train.loop.train_and_evaluate`, with
`train.task.packed_task`); every cell of the table runs through one compiled program
(`train.forward.eval_forward`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections

from fast_ast_jax import convert, sharding
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import make_source
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.models.ast import AST, SIZES
from fast_ast_jax.models.elastic import ElasticAST, params_from_ast
from fast_ast_jax.train.checkpoint import Checkpointer, model_fields_from_meta
from fast_ast_jax.train.evaluation import checkpoint_dir, format_table
from fast_ast_jax.train.forward import evaluate

MODEL_KIND = "elastic"  # checkpoint meta "model_class" (older: "model_kind")

# config.model fields that ElasticAST shares with AST.
_SHARED = ("width", "depth", "num_heads", "mlp_dim", "fstride", "tstride", "dist_token",
           "dropout", "dtype", "tome_r", "tome_prop_attn", "prune_keep_rate", "prune_layers")


def elastic_defaults() -> ml_collections.ConfigDict:
    """The `config.elastic` block (added to a default_config() by elastic recipes)."""
    return ml_collections.ConfigDict(dict(
        rows=4,  # packed rows per step
        max_tokens=256,  # token budget per row (ElasticAST 2048)
        max_slots=16,  # clips per row at most
        hops_ms=(10.0,),  # training hops drawn per clip (ElasticAST 10..40 ms)
        max_frames=1024,  # length cap at each clip's hop (ElasticAST audio_length)
        token_dropout=0.0,  # ElasticAST 0.1 in training
        pos_embedding="factorised",  # or "ast"
        pool="attn",  # or "mean"
        eval_hops_ms=(10.0,),  # evaluation table: hops ...
        eval_max_frames=(1024,),  # ... times length caps
    ))


def build_elastic_model(config, *, num_classes: int, frontend: FrontEnd) -> ElasticAST:
    """ElasticAST sized by config.model; its time table covers config.elastic.max_frames."""
    m, e = config.model, config.elastic
    if m.size not in SIZES:
        raise ValueError(f"config.model.size={m.size!r}; choose one of {sorted(SIZES)}")
    fields = {**SIZES[m.size], **{k: m[k] for k in _SHARED if k in m and m[k] is not None}}
    if m.get("prune_fuse"):
        raise ValueError("config.model.prune_fuse is not supported by the packed model "
                         "(a fused token per sample has no static place in a row)")
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return ElasticAST(num_classes=num_classes, num_mel_bins=frontend.num_mel_bins,
                      frames=max(int(e.max_frames), max(int(f) for f in e.eval_max_frames)),
                      pos_embedding=e.pos_embedding, pool=e.pool, **fields)


def pack_spec(config, model: ElasticAST) -> PackSpec:
    e = config.elastic
    return PackSpec(rows=e.rows, max_tokens=e.max_tokens, max_slots=e.max_slots,
                    patch_size=model.patch_size, fstride=model.fstride, tstride=model.tstride)


def table_pipelines(source, *, frontend: FrontEnd, spec: PackSpec,
                    hops_ms: Sequence[float], max_frames: Sequence[int], **kwargs
                    ) -> list[tuple[dict[str, Any], PackedPipeline]]:
    """One eval pipeline per (hop, length cap): ({"hop_ms", "max_frames"}, pipeline);
    kwargs go to every PackedPipeline (cache, cache_dir, cache_key, on_bad_clip)."""
    return [({"hop_ms": float(hop), "max_frames": int(frames)},
             PackedPipeline(source, frontend=frontend, spec=spec, train=False,
                            hops_ms=(hop,), max_frames=int(frames), **kwargs))
            for hop in hops_ms for frames in max_frames]


def evaluate_table(params, *, model: ElasticAST, pipelines, mesh,
                   multi_label: bool = False) -> list[dict[str, Any]]:
    """Rows {**key, "accuracy" (, "mAP"), "clips_per_s", "num_clips", "bad_clips"}, one
    per (key, pipeline); pipelines of one pack spec share one compiled program."""
    return [{**key, **evaluate(params, model=model, pipeline=pipeline, mesh=mesh,
                               multi_label=multi_label,
                               desc=" ".join(f"{k}={v}" for k, v in key.items()))}
            for key, pipeline in pipelines]


def elastic_sweep(params, *, model: ElasticAST, source, frontend: FrontEnd, spec: PackSpec,
                  hops_ms: Sequence[float], max_frames: Sequence[int],
                  multi_label: bool = False, mesh=None,
                  on_bad_clip: str = "skip") -> list[dict[str, Any]]:
    """Evaluate at every (hop, length cap) of `source`: one row each, all through one
    compiled program (rows as `evaluate_table`; mesh: default all devices)."""
    return evaluate_table(
        params, model=model, mesh=mesh or sharding.make_mesh(), multi_label=multi_label,
        pipelines=table_pipelines(source, frontend=frontend, spec=spec, hops_ms=hops_ms,
                                  max_frames=max_frames, on_bad_clip=on_bad_clip))


def init_from_ast(path: str, model: ElasticAST, *, init, seed: int = 0):
    """ElasticAST params from an AST checkpoint (HF dir, AST .pth, timm DeiT; see
    fast_ast_jax.convert) of the same size and patch grid, via `params_from_ast`."""
    ast = AST(num_classes=model.num_classes, width=model.width, depth=model.depth,
              num_heads=model.num_heads, mlp_dim=model.mlp_dim, patch_size=model.patch_size,
              fstride=model.fstride, tstride=model.tstride, num_mel_bins=model.num_mel_bins,
              frames=model.frames, dist_token=model.dist_token)
    ast_params = convert.load_into(ast, path, seed=seed)
    return params_from_ast(model, ast_params, ast_grid=ast.grid(), num_prefix=ast.num_prefix,
                           init=init)


def _is_elastic(meta: dict) -> bool:
    return MODEL_KIND in (meta.get("model_class"), meta.get("model_kind"))


def is_elastic_checkpoint(path: str | Path) -> bool:
    """Whether the latest checkpoint under `path` holds an ElasticAST."""
    ckpt = Checkpointer(checkpoint_dir(path))
    try:
        _, meta = ckpt.restore()
    finally:
        ckpt.close()
    return _is_elastic(meta)


def load_elastic_checkpoint(path: str | Path) -> tuple[Any, ElasticAST, dict]:
    """(params, model, meta) of an ElasticAST checkpoint (latest step).

    Raises:
        ValueError: if the checkpoint is not an ElasticAST one.
    """
    ckpt = Checkpointer(checkpoint_dir(path))
    try:
        state, meta = ckpt.restore()
    finally:
        ckpt.close()
    if not _is_elastic(meta):
        raise ValueError(f"{path} holds a padded AST checkpoint, not an ElasticAST one; "
                         "evaluate it with fast_ast_jax.train.evaluation")
    fields = model_fields_from_meta(meta)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    return state["params"], ElasticAST(**fields), meta


def evaluate_elastic_checkpoint(path: str | Path, *, config=None, split: str = "eval",
                                settings: Sequence[dict] = ({},),
                                echo=print) -> list[dict[str, Any]]:
    """The (eval_hops_ms x eval_max_frames) table of a checkpoint for each model setting
    (e.g. {"tome_r": 8}); data and table axes from `config` (default: the checkpoint's)."""
    params, model, meta = load_elastic_checkpoint(path)
    config = config or ml_collections.ConfigDict(meta["config"])
    kwargs = config.data[split].to_dict()
    if not kwargs:
        raise ValueError(f"config.data.{split} is empty: nothing to evaluate on")
    frontend = FrontEnd.from_dict(meta["frontend"])
    source = make_source(config.data.source, sample_rate=frontend.sample_rate, **kwargs)
    if list(source.labels) != list(meta["labels"]):
        raise ValueError(f"the {split} data labels {list(source.labels)} differ from the "
                         f"checkpoint's {meta['labels']}")
    rows = []
    for setting in settings:
        variant = model.clone(**setting)
        rows += [{**setting, **row} for row in elastic_sweep(
            params, model=variant, source=source, frontend=frontend,
            spec=pack_spec(config, variant), hops_ms=config.elastic.eval_hops_ms,
            max_frames=config.elastic.eval_max_frames, multi_label=meta["loss"] == "sigmoid",
            on_bad_clip=config.data.on_bad_clip)]
    if echo:
        echo(format_table(rows))
    return rows
