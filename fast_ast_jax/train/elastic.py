"""ElasticAST recipes: the `config.elastic` block, the packed model and pack spec it
builds, and the hop x length evaluation table.

Packed runs train through the one trainer (`train.loop.train_and_evaluate`, with
`train.task.packed_task`); every cell of the table runs through one compiled program
(`train.forward.eval_forward`).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.models.ast import SIZES, model_overrides
from fast_ast_jax.models.elastic import ElasticAST
from fast_ast_jax.train.forward import evaluate

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
    overrides = model_overrides(m)
    fields = {**SIZES[m.size], **{k: overrides[k] for k in _SHARED if k in overrides}}
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
    kwargs go to every PackedPipeline (cache, cache_dir, cache_key, on_bad_clip,
    worker_count)."""
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
