"""config.data.auto_stats: the training split's fbank mean / std, computed once before
training (cached beside the run), held by the run's FrontEnd and checkpoint, and used by
evaluate / predict on that checkpoint; padded, packed and masked-pretraining runs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax import checkpoints
from fast_ast_jax.audio.fbank import fbank
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import make_source
from fast_ast_jax.inference import predict
from fast_ast_jax.train import loop, task
from fast_ast_jax.train.evaluation import evaluate_checkpoint
from tests.helpers import load_config

pytestmark = pytest.mark.slow


def numpy_stats(c) -> tuple[float, float]:
    """Mean and std of every frame and bin of every training clip's fbank, directly."""
    frontend = FrontEnd.from_dict(c.frontend.to_dict())
    source = make_source(c.data.source, sample_rate=frontend.sample_rate,
                         **c.data.train.to_dict())
    cells = np.concatenate([fbank(np.asarray(source[i]["audio"], np.float32),
                                  frontend=frontend).ravel() for i in range(len(source))]
                           ).astype(np.float64)
    return float(cells.mean()), float(cells.std())


def auto(name: str, **overrides):
    c = load_config(name)
    c.update({"num_steps": 2, **overrides})
    c.data.auto_stats = True
    return c


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    """A configs/test.py run with auto_stats, and its config."""
    work = tmp_path_factory.mktemp("auto") / "w"
    c = auto("test")
    final = loop.train_and_evaluate(c, str(work))
    return work, c, final


def test_auto_stats_are_the_training_features_statistics_and_the_checkpoints(auto_run):
    work, c, final = auto_run
    mean, std = numpy_stats(c)
    assert (mean, std) != pytest.approx((c.frontend.mean, c.frontend.std), rel=0.05)
    [cached] = work.glob("frontend-stats-*.json")
    stats = json.loads(cached.read_text())
    assert (stats["mean"], stats["std"]) == pytest.approx((mean, std), rel=1e-6)
    bundle = checkpoints.load(work)
    assert (bundle.frontend.mean, bundle.frontend.std) == (stats["mean"], stats["std"])
    assert c.frontend.mean != stats["mean"]  # the caller's config is left as it was
    # evaluate.py reads the checkpoint's front-end: the end-of-training evaluation again
    rows = evaluate_checkpoint(work, echo=None)
    assert rows[0]["accuracy"] == pytest.approx(final["eval_accuracy"])


def test_predictions_equal_a_run_given_the_numbers(auto_run, tmp_path):
    work, c, _ = auto_run
    bundle = checkpoints.load(work)
    given = auto("test")
    given.data.auto_stats = False
    given.frontend.update(mean=bundle.frontend.mean, std=bundle.frontend.std)
    loop.train_and_evaluate(given, str(tmp_path / "given"))
    assert not list((tmp_path / "given").glob("frontend-stats-*.json"))
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        files.append(tmp_path / f"clip{i}.wav")
        sf.write(files[-1], 0.3 * rng.standard_normal(8000).astype(np.float32), 16000)
    k = len(bundle.labels)

    def scores(checkpoint):
        return [dict(top) for top in predict(files, checkpoint=checkpoint, top_k=k)]

    ours = scores(work)
    for a, b in zip(ours, scores(tmp_path / "given")):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[n] for n in a], [b[n] for n in a], rtol=1e-5)
    # the numbers matter: the AudioSet defaults in their place change the scores
    default = dataclasses.replace(bundle, frontend=bundle.frontend.replace(
        mean=FrontEnd.mean, std=FrontEnd.std))
    assert any(not np.allclose([a[n] for n in a], [b[n] for n in a], rtol=1e-3)
               for a, b in zip(ours, scores(default)))


def test_a_resumed_run_reads_the_cached_numbers(auto_run, tmp_path, monkeypatch):
    work, c, _ = auto_run
    resumed = tmp_path / "resumed"
    loop.train_and_evaluate(auto("test"), str(resumed))
    before = checkpoints.load(resumed).frontend

    def recompute(*args, **kwargs):
        raise AssertionError("statistics computed again")

    monkeypatch.setattr(task, "fbank_moments", recompute)
    final = loop.train_and_evaluate(auto("test", num_steps=4), str(resumed))
    assert final["step"] == 4
    assert checkpoints.load(resumed).frontend == before


@pytest.mark.parametrize("name", ["test_elastic", "test_pretrain"])
def test_packed_and_pretraining_runs(name, tmp_path):
    c = auto(name, num_steps=1)
    loop.train_and_evaluate(c, str(tmp_path / "w"))
    mean, std = numpy_stats(c)
    bundle = checkpoints.load(tmp_path / "w")
    assert (bundle.frontend.mean, bundle.frontend.std) == pytest.approx((mean, std), rel=1e-6)
