"""FastAST on AudioSet (balanced 20k by default, as FastAST): configs/audioset.py with ToMe
during training and CMKD from teacher logits (FastAST, arXiv 2406.07676). Not runnable here.

    python -m fast_ast_jax.distill dump --checkpoint TEACHER --config configs/audioset.py:balanced \
        --split train --out as20k_teacher.npz --top_k 50
    python train.py --config configs/audioset_fastast.py --workdir /tmp/as_fastast \
        --config.distill.teacher_logits=as20k_teacher.npz (+ the data paths)

Prototype settings: patch stride 12 (frequency) / 10 (time), 1024 frames -> 12 x 101 =
1212 patches; r = 32 (its training script); multi-label sigmoid distillation with lam = 0.1
(label weight) and tau = 1.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "balanced"):
    c = recipe(Path(__file__).with_name("audioset.py"), arg)
    c.model.update(fstride=12, tstride=10, tome_r=32)
    c.distill.update(teacher_logits="", lam=0.1, tau=1.0)
    return c
