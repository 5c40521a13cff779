"""TopK-pruned AST on FSDD, trained with the keep-rate schedule of EViT / the pruning paper.

    python train.py --config configs/fsdd_topk.py:official --workdir /tmp/fsdd_topk

The AST of configs/fsdd.py keeps half of its patch tokens at blocks 2, 3 and 4
(prune_keep_rate 0.5, ceil(0.5 * N) best by class attention). Training starts unpruned and
lowers the rate from 1 to 0.5 between epochs 5 and 20 (the paper's ESC-50 / SPC-2 shrink:
start 5, 15 epochs) with a half cosine rounded up to 4 rates (1, 0.833, 0.667, 0.5): four
compiled train steps, each logged when it compiles (fast_ast_jax.train.keep_rate).
Evaluation always prunes at 0.5. Not yet run: no expected accuracy is recorded.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import recipe


def get_config(arg: str = "fold"):
    c = recipe(Path(__file__).with_name("fsdd.py"), arg)
    c.model.prune_keep_rate = 0.5  # at c.model.prune_layers = (2, 3, 4)
    c.keep_rate_schedule.update(start_epoch=5.0, end_epoch=20.0, num_rates=4)
    return c
