"""Training learns: on generated data the loss falls well below its first value, for the
padded (train_and_evaluate) and the packed (ElasticAST) trainer.

Synthetic clips (8 signal classes: tones, chirps, clicks, ...) are easy; a 1-block AST at
lr 1e-3 fits its 32 (padded) / 24 (packed) training clips within a few epochs. The first
loss is about log(8) = 2.08 or more (random head); a trainer whose gradient, optimiser, labels or
packing were broken would stay near it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import load_config

pytestmark = pytest.mark.slow


FRACTION = 0.5  # mean loss of the last 5 steps < FRACTION x the first step's loss


def losses(workdir) -> list[float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r]


def configure(c, steps: int):
    c.update(num_steps=steps, log_every=1, checkpoint_every=1000, eval_every=0)
    c.data.eval = {}
    c.optim.update(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.0)
    return c


def check_learns(curve: list[float], steps: int) -> None:
    assert len(curve) == steps
    assert curve[0] > 0.7 * np.log(8)  # untrained: about log(8) or more (random head)
    assert np.mean(curve[-5:]) < FRACTION * curve[0], curve


def test_padded_training_learns(tmp_path):
    from fast_ast_jax.train.loop import train_and_evaluate

    c = configure(load_config("test"), steps=40)  # 32 clips, batch 8: 10 epochs
    train_and_evaluate(c, str(tmp_path / "work"))
    check_learns(losses(tmp_path / "work"), 40)


def test_packed_training_learns(tmp_path):
    from fast_ast_jax.train.loop import train_and_evaluate

    c = configure(load_config("test_elastic"), steps=40)
    c.model.update(depth=1, tome_r=0)
    c.elastic.update(token_dropout=0.0)
    train_and_evaluate(c, str(tmp_path / "work"))
    check_learns(losses(tmp_path / "work"), 40)
