"""FastAST on ESC-50: configs/esc50.py with ToMe during training and CMKD from teacher logits
(FastAST, arXiv 2406.07676). Not runnable here (needs ESC-50 and pretrained weights).

    python -m fast_ast_jax.distill dump --checkpoint TEACHER_WORKDIR \
        --config configs/esc50.py:fold=1 --split train --out esc50_f1_teacher.npz
    python train.py --config configs/esc50_fastast.py:fold=1 --workdir /tmp/esc50_fastast \
        --config.distill.teacher_logits=esc50_f1_teacher.npz (+ the data paths of esc50.py)

The teacher file must hold the training folds' clips (one file per fold). FastAST's
published material gives no r, lam or tau per dataset; we use the
prototype's KD defaults lam = 0.1 (weight of the label term) and tau = 1, and r = 32 (its
training script) — 512 frames at stride 10 give 12 x 50 = 600 patches, so r = 32 in the
11 blocks that merge (the last never does) leaves 248.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "fold=1"):
    c = recipe(Path(__file__).with_name("esc50.py"), arg)
    c.model.tome_r = 32
    c.distill.update(teacher_logits="", lam=0.1, tau=1.0)
    return c
