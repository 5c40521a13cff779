"""ElasticAST recipes: the `config.elastic` block (with config.model.name "elastic";
read into train.spec.Elastic, the model's fields by train.spec.read_config) and the hop x
length evaluation table.

Packed runs train through the one trainer (`train.loop.train_and_evaluate`, with
`train.task.make_task`); every cell of the table runs through one compiled program
(`train.forward.eval_forward`).
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.models.elastic import ElasticAST
from fast_ast_jax.train.forward import evaluate


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
