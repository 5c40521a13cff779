"""ElasticAST recipes (arXiv 2407.08691; docs/REFERENCES.md §6). Not runnable here (needs the
datasets); the shapes and hyperparameters are ElasticAST's.

    :resolution  AudioSet, resolution elasticity: hop drawn per clip from 10..40 ms
                 (q = 1.0..4.0 step 0.2), length cap 1024 frames at that hop, BCE,
                 evaluation over hops 10/14/20/24/30/34/40 ms (their table).
    :length      VoxCeleb-style length elasticity: native lengths up to 3072 frames at
                 10 ms, CE, evaluation over length caps 256..3072 frames.

Both: 3 rows of 2048 tokens per step (ElasticAST takes 12 clips per step: 3 rows for 10 s
clips at 10 ms after token dropout), 16x16 patches with stride 16, token dropout 0.1, Adam
(0.95, 0.999), weight decay 5e-7, lr 1e-5, 1000 warm-up steps. Differences to ElasticAST:
a fixed number of rows per step (static shapes) instead of 12 clips per step, attention
scaled by 1/sqrt(d), and config.init_from takes an AST-layout checkpoint
(fast_ast_jax.convert), not a raw ImageNet ViT / SSAST file.
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config
from fast_ast_jax.train.elastic import elastic_defaults


def get_config(arg: str = "resolution"):
    if arg not in ("resolution", "length"):
        raise ValueError(f"configs/audioset_elastic.py:{arg}: use ':resolution' or ':length'")
    c = default_config()
    c.model.name = "elastic"  # ElasticAST on packed rows, shaped by c.elastic
    c.elastic = elastic_defaults()
    c.data.source = "folder"
    c.data.cache = False
    c.model.update(size="base", fstride=16, tstride=16)
    c.optim.update(name="adam", lr=1e-5, b1=0.95, b2=0.999, weight_decay=5e-7,
                   clip_norm=0.0, warmup_steps=1000, schedule="step", decay_epochs=1)
    c.elastic.update(rows=3, max_tokens=2048, max_slots=16, token_dropout=0.1,
                     pos_embedding="factorised", pool="attn")
    if arg == "resolution":
        hops = tuple(round(10.0 * q, 1) for q in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.4,
                                                  2.6, 2.8, 3.0, 3.2, 3.4, 3.6, 3.8, 4.0))
        c.loss = "sigmoid"
        c.num_epochs = 15
        c.data.train = {"multi_label": True, "csv_path": "audioset/train.csv"}
        c.data.eval = {"multi_label": True, "csv_path": "audioset/eval.csv"}
        c.augment.update(freqm=48, timem=192)
        c.optim.update(decay_start_epoch=2, decay_rate=0.5)
        c.elastic.update(hops_ms=hops, max_frames=1024,
                         eval_hops_ms=(10.0, 14.0, 20.0, 24.0, 30.0, 34.0, 40.0),
                         eval_max_frames=(1024,))
    else:
        c.loss = "softmax"
        c.num_epochs = 40
        c.data.train = {"csv_path": "voxceleb/train.csv"}
        c.data.eval = {"csv_path": "voxceleb/test.csv"}
        c.frontend.update(mean=-5.8425, std=3.8831)
        c.augment.update(freqm=48, timem=192)
        c.optim.update(decay_start_epoch=5, decay_rate=0.75)
        c.elastic.update(hops_ms=(10.0,), max_frames=3072, eval_hops_ms=(10.0,),
                         eval_max_frames=(256, 400, 768, 1024, 1600, 2048, 3072))
    return c
