"""FastAST on Speech Commands V2-35: configs/speechcommands.py with ToMe during training and
CMKD from teacher logits (FastAST, arXiv 2406.07676, and its prototype's README). Not runnable here.

    python train.py --config configs/speechcommands_fastast.py --workdir /tmp/sc_fastast \
        --config.distill.teacher_logits=sc_teacher_train.npz (+ the data paths)

As the prototype (and AST) this single-label task trains with BCE, so distillation is the
sigmoid form: BCE(sigmoid(student), sigmoid(teacher / tau)). lam = 0.1, tau = 1 (prototype
KD defaults; the paper's values are unpublished). 128 frames at stride 10 give 12 x 12 =
144 patches (+2 class tokens): r = 8 leaves 58 tokens after the 11 blocks that merge (the
last never does). The prototype's
r = 32 (training) or 16 (evaluation) would hit ToMe's 50 % cap and shrink the sequence
to a handful of tokens in the last blocks (146 -> 34 after 7 blocks at r = 16).
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "valid"):
    c = recipe(Path(__file__).with_name("speechcommands.py"), arg)
    c.model.tome_r = 8
    c.distill.update(teacher_logits="", lam=0.1, tau=1.0)
    return c
