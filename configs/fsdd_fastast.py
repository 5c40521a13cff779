"""FastAST on FSDD: the AST of configs/fsdd.py trained with ToMe (r tokens merged in every
block but the last) and cross-model distillation from the CNN teacher's logits (configs/fsdd_teacher_cnn.py).

    python train.py --config configs/fsdd_fastast.py:official --workdir /tmp/fsdd_fastast \
        --config.distill.teacher_logits=/tmp/fsdd_cnn/teacher_train.npz
    python evaluate.py --checkpoint /tmp/fsdd_fastast --sweep r=0,2,4

Without --config.distill.teacher_logits it trains with ToMe only (the "AST trained with
ToMe" row of the FSDD table). Loss (CMKD): lam * CE(student, y) + (1 - lam) *
KL(softmax(teacher / tau) || softmax(student)), lam 0.5 and tau 1 (CMKD's lam; tau 1 as
FastAST's prototype). Token grid 8 x 8 = 64 patches (+2 class tokens); r = 8 merges 8
tokens in each of the first 5 blocks (66 tokens enter the first block, 26 the last, which
computes only the class tokens): 1.5x fewer MACs than the baseline.
Expected on the held-out speaker (benchmarks/fsdd_fastast.py, docs/RESULTS.md): 0.614 with
the CNN teacher, 0.650 with the CNN + AST ensemble teacher (`distill ensemble`), against
0.626 for the baseline AST, at 1.9x its throughput.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "fold"):
    c = recipe(Path(__file__).with_name("fsdd.py"), arg)
    c.model.tome_r = 8
    c.distill.update(teacher_logits="", lam=0.5, tau=1.0)
    return c
