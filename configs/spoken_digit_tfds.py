"""TFDS spoken_digit (the FSDD recordings, prepared offline under ../shared/data/tfds).

    python train.py --config configs/spoken_digit_tfds.py --workdir /tmp/sd
    python train.py --config configs/spoken_digit_tfds.py:array_record --workdir /tmp/sd_ar

TFDS has a single `train` split of 2,500 clips; 80/20 slices are used (not speaker-held-out,
comparable to FSDD's official split). `:array_record` reads the ArrayRecord copy with random
access (`tfds.data_source`); the default reads the TFRecord copy into memory once.
Expected: like configs/fsdd.py:official.
"""
from __future__ import annotations

from pathlib import Path

from fast_ast_jax.train.config import default_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def get_config(arg: str = "tfrecord"):
    if arg not in ("tfrecord", "array_record"):
        raise ValueError(f"configs/spoken_digit_tfds.py:{arg}: use ':tfrecord' or "
                         "':array_record'")
    c = default_config()
    c.batch_size = 32
    c.num_epochs = 30
    c.log_every = 20
    c.eval_every = 200
    c.checkpoint_every = 200
    c.frontend.target_frames = 128
    data_dir = str(DATA / ("tfds" if arg == "tfrecord" else "tfds_array_record"))
    common = {"name": "spoken_digit", "data_dir": data_dir, "id_key": "audio/filename"}
    c.data.source = "tfds"
    c.data.train = {**common, "split": "train[:80%]"}
    c.data.eval = {**common, "split": "train[80%:]"}
    c.model.update(size="tiny", fstride=16, tstride=16, dropout=0.1)
    c.augment.update(freqm=24, timem=24)
    c.optim.update(lr=1e-3, warmup_steps=100, weight_decay=0.05)
    return c
