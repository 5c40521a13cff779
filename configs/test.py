"""Tiny CPU config for tests: a 1-block, width-64 AST on 64 synthetic clips.

    python train.py --config configs/test.py --workdir /tmp/test

Expected: finishes in seconds; accuracy is not meaningful (a handful of steps).
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config


def get_config():
    c = default_config()
    c.batch_size = 8
    c.num_steps = 4
    c.log_every = 2
    c.checkpoint_every = 2
    c.frontend.num_mel_bins = 32
    c.frontend.target_frames = 48
    c.data.train = {"num_examples": 32, "split": "train", "min_seconds": 0.2,
                    "max_seconds": 0.5}
    c.data.eval = {"num_examples": 16, "split": "eval", "min_seconds": 0.2,
                   "max_seconds": 0.5}
    c.model.update(width=64, depth=1, num_heads=2, mlp_dim=256, fstride=16, tstride=16)
    c.optim.lr = 1e-3
    return c
