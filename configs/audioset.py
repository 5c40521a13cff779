"""AudioSet recipe (full 2M or balanced 20k), mirroring AST's egs/audioset/run.sh
(docs/REFERENCES.md §8). Not runnable here (needs AudioSet audio).

    python train.py --config configs/audioset.py:full --workdir /tmp/as \
        --config.data.train.csv_path=audioset/train.csv --config.data.eval.csv_path=...

CSVs: `filename,label` with ';'-separated label ids (multi-label) and the 527 class names
given in the order of the ontology (--config.data.*.labels or the CSV's sorted names).
AST reports 0.459 mAP (full, with weight averaging; 0.448 without). Differences to AST:
no balanced sampler and no weight averaging (not implemented yet).
"""
from __future__ import annotations

from fast_ast_jax.train.config import default_config


def get_config(arg: str = "full"):
    if arg not in ("full", "balanced"):
        raise ValueError(f"configs/audioset.py:{arg}: use ':full' or ':balanced'")
    full = arg == "full"
    c = default_config()
    c.batch_size = 12
    c.num_epochs = 5 if full else 25
    c.loss = "sigmoid"
    c.frontend.update(target_frames=1024)  # AudioSet mean/std are the defaults
    common = {"multi_label": True}
    c.data.source = "folder"
    c.data.train = {**common, "csv_path": "audioset/train.csv"}
    c.data.eval = {**common, "csv_path": "audioset/eval.csv"}
    c.data.cache = False  # 2M clips do not fit in memory
    # ... so every epoch decodes and featurises every clip: in 8 loader processes (AST's
    # run.sh uses 32 PyTorch loader workers); give one per spare CPU core.
    c.data.worker_count = 8
    c.model.update(size="base", fstride=10, tstride=10)
    c.augment.update(freqm=48, timem=192, mixup=0.5)
    # AST warms up linearly over 1000 steps, then MultiStepLR per epoch.
    c.optim.update(name="adam", lr=1e-5 if full else 5e-5, b1=0.95, b2=0.999,
                   weight_decay=5e-7, clip_norm=0.0, warmup_steps=1000, schedule="step",
                   decay_start_epoch=2 if full else 10, decay_epochs=1 if full else 5,
                   decay_rate=0.5)
    return c
