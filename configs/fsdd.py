"""FSDD spoken digits (../shared/data/fsdd): AST-tiny from scratch, 8 kHz audio at 16 kHz.

    python train.py --config configs/fsdd.py --workdir /tmp/fsdd            # held-out speaker
    python train.py --config configs/fsdd.py:official --workdir /tmp/fsdd_o # official split
    python evaluate.py --checkpoint /tmp/fsdd

`,frames` (e.g. `:official,frames`, or `:frames` for the held-out speaker) swaps the 16x16
patches for SSAST's frame patches: 128 mel bins x 2 frames at strides (128, 2), one token
per 2-frame column - as many tokens (64) as 16x16 at stride 16 over the 128 frames, the
same cost; SSAST found them best for speech. The recipes built on this one
(fsdd_pretrain.py, fsdd_topk.py, ...) take the same argument; pretrain and fine-tune with
the same patch. Not yet measured on FSDD.

Splits (meta.csv): by default the speaker-held-out `fold` (train on 5 speakers, test on
theo); `:official` uses the dataset's `official_split` (recordings 0-4 of every speaker are
the test set). Reference points (docs/REFERENCES.md §9): MFCC 1-NN scores 0.96 (official) and 0.57
(held-out speaker); the target is >= 0.95 on the official split. Results: docs/RESULTS.md.

Expected (docs/RESULTS.md, measured 2026-11-22 on 2 CPU cores): official split 0.953 after
50 epochs (~30 min idle at 80-88 clips/s, 52 min on the shared machine); held-out speaker
0.626 after 30 epochs. Off-the-shelf ToMe r=12 (1.9x fewer MACs by today's count, which
skips the useless last-block merge) keeps 0.950 on the official split. Featurising the 3,000 clips takes ~75 s; pass --config.data.cache_dir=DIR
to do it once across runs.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import default_config

# ../shared/data/fsdd next to the repository root (override with --config.data.*.csv_path).
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def get_config(arg: str = "fold"):
    parts = [p for p in arg.split(",") if p]
    split = [p for p in parts if p in ("fold", "official")] or ["fold"]
    if len(split) > 1 or any(p not in ("fold", "official", "frames") for p in parts):
        raise ValueError(f"configs/fsdd.py:{arg}: use ':fold' (held-out speaker) or "
                         "':official', optionally with ',frames' (e.g. ':official,frames')")
    arg = split[0]
    column, test = ("fold", "test") if arg == "fold" else ("official_split", "test")
    c = default_config()
    c.batch_size = 32
    # The official split's 2,700 clips need the longer schedule to pass 0.95 (30 epochs with
    # dropout 0.1: 0.913 at epoch 25, train accuracy still below eval accuracy).
    c.num_epochs = 50 if arg == "official" else 30
    c.log_every = 20
    c.eval_every = 200
    c.checkpoint_every = 200
    # Digits last 0.14-2.28 s (99th percentile 0.92 s): 128 frames = 1.28 s.
    c.frontend.target_frames = 128
    common = {"csv_path": str(FSDD / "meta.csv"), "audio_dir": str(FSDD)}
    c.data.source = "folder"
    c.data.train = {**common, "select": {column: "train"}}
    c.data.eval = {**common, "select": {column: test}}
    # AST-tiny width (192, 3 heads) with 6 of its 12 blocks: a full 30-epoch run fits in
    # ~25 min on 2 CPU cores (12 blocks: ~35 clips/s, 40 min).
    # TopK pruning (evaluate.py --keep_rate) in blocks 2, 3, 4: AST's (3, 6, 9) of 12 blocks
    # scaled to 6 (1.5, 3, 4.5) and rounded inwards.
    c.model.update(size="tiny", depth=6, fstride=16, tstride=16, dropout=0.0,
                   prune_layers=(2, 3, 4))
    if "frames" in parts:  # the module docstring
        c.model.update(patch_size=(128, 2), fstride=128, tstride=2)
    # Mild masks: a digit fills only ~45 of the 128 frames, a 24-frame time mask erased half
    # of it (train accuracy stayed at 0.75 with freqm=timem=24 after 15 epochs).
    c.augment.update(freqm=16, timem=8)
    c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05)
    return c
