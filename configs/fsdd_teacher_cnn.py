"""CNN teacher on FSDD (../shared/data/fsdd) for cross-model distillation (FastAST / CMKD):
an EfficientNet-style CNN with attention pooling, same data, splits and front-end as
configs/fsdd.py, then its logits on the training split for the student.

    python train.py --config configs/fsdd_teacher_cnn.py:official --workdir /tmp/fsdd_cnn
    python -m fast_ast_jax.distill dump --checkpoint /tmp/fsdd_cnn --split train \
        --out /tmp/fsdd_cnn/teacher_train.npz
    python train.py --config configs/fsdd_fastast.py:official --workdir /tmp/fsdd_fastast \
        --config.distill.teacher_logits=/tmp/fsdd_cnn/teacher_train.npz

`:fold` (default) is the held-out-speaker split, `:official` the dataset's official split;
the student must use the same split (its clip ids are checked against the file).
Expected: 0.640 on the held-out speaker after 30 epochs (the AST baseline: 0.626);
benchmarks/fsdd_fastast.py writes the whole FSDD table (docs/RESULTS.md).
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "fold"):
    c = recipe(Path(__file__).with_name("fsdd.py"), arg)
    c.model.name = "cnn"
    # 128 frames x 128 bins: the stem and 3 stride-2 stages leave 16 x 16 maps before
    # pooling. "tiny" stages train ~2.5x faster than "small" on 2 CPU cores (55 vs 22 clips/s).
    c.model.cnn.update(stages="tiny", stem_channels=32, feature_dim=256,
                       pooling="attention", dropout=0.2)
    c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05)
    return c
