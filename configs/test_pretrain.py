"""Tiny CPU config for tests: masked pretraining (model.name "mae") of configs/test.py's
encoder (1 block, width 64) on the synthetic clips, their labels ignored.

    python train.py --config configs/test_pretrain.py --workdir /tmp/test_pretrain
    python train.py --config configs/test.py --workdir /tmp/test_ft \
        --config.init_from=/tmp/test_pretrain

Expected: finishes in seconds; the second run starts from the pretrained encoder (fresh
head). The eval metric is the reconstruction loss on the eval clips (fixed mask key).
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config():
    c = recipe(Path(__file__).with_name("test.py"))  # the encoder and data to fine-tune
    c.num_steps = 6
    c.model.update(name="mae", mask_ratio=0.75, decoder_width=32, decoder_depth=1,
                   decoder_heads=2)
    return c
