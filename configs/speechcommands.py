"""Speech Commands V2-35 recipe, mirroring AST's egs/speechcommands/run_sc.sh (docs/REFERENCES.md
§8). Not runnable here (needs the dataset).

    python train.py --config configs/speechcommands.py --workdir /tmp/sc \
        --config.data.train.csv_path=speech_commands_v2/meta.csv (same for data.eval)

meta.csv: `filename,label,split` with split train / valid / test from the dataset's
validation_list.txt and testing_list.txt. AST (ImageNet init) reports 98.12 % test accuracy;
note AST trains this single-label task with BCE, mixup 0.6 and noise + time-roll.
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config


def get_config(arg: str = "valid"):
    if arg not in ("valid", "test"):
        raise ValueError(f"configs/speechcommands.py:{arg}: evaluate on ':valid' or ':test'")
    c = default_config()
    c.batch_size = 128
    c.num_epochs = 30
    c.loss = "sigmoid"
    c.frontend.update(target_frames=128, mean=-6.845978, std=5.5654526)
    common = {"csv_path": "speech_commands_v2/meta.csv"}
    c.data.source = "folder"
    c.data.train = {**common, "select": {"split": "train"}}
    c.data.eval = {**common, "select": {"split": arg}}
    c.model.update(size="base", fstride=10, tstride=10)
    c.augment.update(freqm=48, timem=48, mixup=0.6, noise=True)
    c.optim.update(name="adam", lr=2.5e-4, b1=0.95, b2=0.999, weight_decay=5e-7,
                   clip_norm=0.0, warmup_steps=0, schedule="step", decay_start_epoch=5,
                   decay_epochs=1, decay_rate=0.85)
    return c
