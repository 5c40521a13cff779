"""The TopK keep-rate schedule: values of the pure function, and the trainer compiling one
step per distinct rate (logged), on generated data."""
from __future__ import annotations

import math

import pytest

from fast_ast_jax.train import keep_rate
from fast_ast_jax.train.config import recipe
from fast_ast_jax.train.spec import read_config
from tests.helpers import ROOT, load_config, tiny


def test_keep_rate_values():
    kw = dict(target=0.4, start_step=10, end_step=20, num_rates=4)  # grid 1, .8, .6, .4
    rates = [keep_rate.keep_rate_at(s, **kw) for s in range(25)]
    assert rates[:11] == [1.0] * 11 and rates[20:] == [pytest.approx(0.4)] * 5
    # Step 16: cosine 0.4 + 0.6 * (1 + cos(0.6 pi)) / 2 = 0.607, rounded up to 0.8.
    assert 0.4 + 0.6 * (1 + math.cos(0.6 * math.pi)) / 2 == pytest.approx(0.6073, abs=1e-4)
    assert rates[16] == pytest.approx(0.8)
    assert rates[11:20] == pytest.approx([1.0, 1.0, 1.0, 0.8, 0.8, 0.8, 0.6, 0.6, 0.6])
    assert sorted(set(rates), reverse=True) == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert keep_rate.keep_rate_at(15, **{**kw, "num_rates": 2}) == 1.0  # round up, not down
    for bad, match in [(dict(num_rates=1), "num_rates=1"), (dict(start_step=20), "before"),
                       (dict(target=0.0), "prune_keep_rate=0.0")]:
        with pytest.raises(ValueError, match=match):
            keep_rate.keep_rate_at(0, **{**kw, **bad})


def test_recipe_uses_the_schedule():
    c = recipe(ROOT / "configs" / "fsdd_topk.py", "official")
    run = read_config(c)
    target = run.model.fields["prune_keep_rate"]
    rate = keep_rate.rate_schedule(run.keep_rate_schedule, target=target, steps_per_epoch=10)
    assert (rate(0), rate(49), rate(200)) == (1.0, 1.0, 0.5)
    assert {round(rate(s), 4) for s in range(300)} == {1.0, 0.8333, 0.6667, 0.5}
    c.keep_rate_schedule.end_epoch = 0.0  # off: the final rate from step 0
    assert keep_rate.rate_schedule(read_config(c).keep_rate_schedule, target=target,
                                   steps_per_epoch=10) is None


@pytest.mark.slow
def test_training_compiles_one_step_per_rate(tmp_path, capsys):
    from fast_ast_jax.train.loop import train_and_evaluate

    c = tiny(load_config("test"))
    c.model.update(depth=2, prune_keep_rate=0.5, prune_layers=(0,))  # the last never prunes
    c.num_steps, c.log_every, c.checkpoint_every = 8, 4, 100
    c.data.eval = {}
    # 32 clips / batch 4 = 8 steps per epoch: rate 1 until step 2, half cosine to 0.5 at
    # step 6 on the grid 1, 0.75, 0.5: steps 0-3 at 1, 4-5 at 0.75, 6-7 at 0.5.
    c.keep_rate_schedule.update(start_epoch=0.25, end_epoch=0.75, num_rates=3)
    result = train_and_evaluate(c, str(tmp_path / "work"))
    assert result["step"] == 8
    out = capsys.readouterr().out + capsys.readouterr().err
    logged = [line for line in out.splitlines() if line.startswith("keep-rate schedule")]
    assert [line.split("prune_keep_rate=")[1].split()[0] for line in logged] == [
        "1", "0.75", "0.5"]
    assert "step 0 compiles" in logged[0] and "program 3 of at most 3" in logged[2]
