"""FSDD spoken digits with ElasticAST: native clip lengths and hops of 10-40 ms, packed.

    python train.py --config configs/fsdd_elastic.py:official --workdir /tmp/fsdd_elastic

Same data and model size as configs/fsdd.py, but every clip keeps its own length (up to
256 frames at its hop, 2.56 s at 10 ms: every FSDD digit) and, in training, a hop drawn
from {10, 20, 30, 40} ms; clips are packed into 4 rows x 256 tokens per step (16x16 patches
with stride 16: a 1 s digit at 10 ms is 8 x 6 = 48 tokens). Evaluation reports a table over
hops 10/20/30/40 ms x length caps 64/128/256 frames, all through one compiled program.
Expected on the held-out speaker (benchmarks/fsdd_elastic.py, docs/RESULTS.md): 0.712 at
30 ms, 0.666 at 20 ms, 0.630 at 40 ms and 0.484 at 10 ms (the padded AST: 0.626 at its
10 ms, 0.17-0.30 at other hops), with 0.974 of row places real and 2.6x the training
clips/s of padding to 128 frames.

`:kd` (or `:official,kd`) is the whole composition, ElasticAST + ToMe + CMKD: ToMe merges
r = 16 tokens per packed row in every block but the last, and the loss distils the CNN teacher's logits
(configs/fsdd_teacher_cnn.py on the same split; docs/ELASTIC.md, "ElasticAST + ToMe + CMKD"):

    python -m fast_ast_jax.distill dump --checkpoint /tmp/fsdd_cnn --split train \
        --out /tmp/fsdd_cnn/teacher_train.npz
    python train.py --config configs/fsdd_elastic.py:kd --workdir /tmp/fsdd_elastic_kd \
        --config.distill.teacher_logits=/tmp/fsdd_cnn/teacher_train.npz

Not measured yet (no result to expect).
"""
from __future__ import annotations

from configs.fsdd import get_config as fsdd_config
from fast_ast_jax.train.elastic import elastic_defaults


def get_config(arg: str = "fold"):
    parts = [p for p in arg.split(",") if p]
    split = [p for p in parts if p in ("fold", "official")] or ["fold"]
    unknown = [p for p in parts if p not in ("fold", "official", "kd")]
    if unknown or len(split) > 1:
        raise ValueError(f"configs/fsdd_elastic.py:{arg}: use ':fold' or ':official', "
                         "optionally with ',kd' (e.g. ':official,kd'), or ':kd'")
    c = fsdd_config(split[0])
    c.model.name = "elastic"  # ElasticAST on packed rows, shaped by c.elastic
    c.elastic = elastic_defaults()
    c.elastic.update(rows=4, max_tokens=256, max_slots=32, hops_ms=(10.0, 20.0, 30.0, 40.0),
                     max_frames=256, token_dropout=0.1, pos_embedding="factorised",
                     pool="attn", eval_hops_ms=(10.0, 20.0, 30.0, 40.0),
                     eval_max_frames=(64, 128, 256))
    c.augment.update(mixup=0.0)
    if "kd" in parts:
        # r is per packed row and block (a row holds ~14 digits at 10 ms); CMKD's lam 0.5
        # and tau 1 as configs/fsdd_fastast.py. The teacher file is given on the command
        # line (--config.distill.teacher_logits), as in configs/fsdd_fastast.py.
        c.model.tome_r = 16
        c.distill.update(teacher_logits="", lam=0.5, tau=1.0)
    return c
