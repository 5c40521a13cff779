"""ESC-50 recipe, mirroring AST's egs/esc50/run_esc.sh (docs/REFERENCES.md §8). Not runnable here
(needs the ESC-50 audio and pretrained AudioSet AST weights).

    python train.py --config configs/esc50.py:fold=1 --workdir /tmp/esc50_f1 \
        --config.data.train.csv_path=ESC-50/meta/esc50.csv \
        --config.data.train.audio_dir=ESC-50/audio (same for data.eval) \
        --config.init_from=audioset_10_10_0.4593.pth

5-fold cross-validation: fold k is the eval set, the other four train. AST reports 95.75 %
(mean over folds, best epoch chosen on the fold-averaged curve) with ImageNet + AudioSet
pretraining; lr 1e-4 without AudioSet pretraining.
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config


def get_config(arg: str = "fold=1"):
    fold = int(arg.partition("=")[2] or 1)
    if not 1 <= fold <= 5:
        raise ValueError(f"configs/esc50.py:{arg}: fold must be 1..5")
    c = default_config()
    c.batch_size = 48
    c.num_epochs = 25
    c.loss = "softmax"
    c.frontend.update(target_frames=512, mean=-6.6268077, std=5.358466)
    common = {"csv_path": "ESC-50/meta/esc50.csv", "audio_dir": "ESC-50/audio",
              "label_column": "category"}
    c.data.source = "folder"
    c.data.train = {**common, "select": {"fold": [str(k) for k in range(1, 6) if k != fold]}}
    c.data.eval = {**common, "select": {"fold": str(fold)}}
    c.model.update(size="base", fstride=10, tstride=10)
    c.augment.update(freqm=24, timem=96, mixup=0.0)
    c.optim.update(name="adam", lr=1e-5, b1=0.95, b2=0.999, weight_decay=5e-7, clip_norm=0.0,
                   warmup_steps=0, schedule="step", decay_start_epoch=5, decay_epochs=1,
                   decay_rate=0.85)
    return c
