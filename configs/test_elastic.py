"""Tiny CPU config for the packed (ElasticAST) path: 2 blocks (ToMe r=2 in the first; the
last block never reduces), width 64, synthetic clips of 0.2-0.6 s at hops 10 or 20 ms
packed into 2 rows x 48 tokens.

    python train.py --config configs/test_elastic.py --workdir /tmp/test_elastic
"""
from __future__ import annotations

from configs.test import get_config as test_config
from fast_ast_jax.train.elastic import elastic_defaults


def get_config():
    c = test_config()
    c.model.name = "elastic"  # ElasticAST on packed rows, shaped by c.elastic
    c.elastic = elastic_defaults()
    c.data.train = {"num_examples": 24, "split": "train", "min_seconds": 0.2,
                    "max_seconds": 0.6}
    c.data.eval = {"num_examples": 8, "split": "eval", "min_seconds": 0.2,
                   "max_seconds": 0.6}
    c.elastic.update(rows=2, max_tokens=48, max_slots=8, hops_ms=(10.0, 20.0),
                     max_frames=64, token_dropout=0.1, eval_hops_ms=(10.0, 20.0),
                     eval_max_frames=(32, 64))
    c.model.update(depth=2, tome_r=2)
    return c
