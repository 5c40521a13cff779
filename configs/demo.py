"""Demo: AST-tiny (4 blocks) learns 8 synthetic sound types; no data files needed.

    python train.py --config configs/demo.py --workdir /tmp/demo
    python evaluate.py --checkpoint /tmp/demo

Expected (2 CPU cores): eval accuracy >= 0.95 on 256 held-out clips; see the README for the
measured wall time.
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config


def get_config():
    c = default_config()
    c.batch_size = 32
    c.num_epochs = 10
    c.log_every = 20
    c.checkpoint_every = 100
    c.frontend.num_mel_bins = 64
    c.frontend.target_frames = 128
    c.data.train = {"num_examples": 1024, "split": "train"}
    c.data.eval = {"num_examples": 256, "split": "eval"}
    c.model.update(depth=4, fstride=16, tstride=16)
    c.augment.update(freqm=12, timem=24)
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 30
    return c
