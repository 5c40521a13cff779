"""The grain loader (fast_ast_jax.data.loader): worker processes give the in-process
batches in the same order, padded and packed; bad clips in workers are counted here or
fail naming the file; a run resumes bit-exactly with another worker count."""
from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from fast_ast_jax.audio import AudioError
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import FolderSource, SyntheticSource
from fast_ast_jax.data.loader import iterate
from fast_ast_jax.data.packed import PackedPipeline, PackSpec
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.train import loop
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_pipeline
from tests.helpers import bad_folder, constant_lr

FE = FrontEnd(num_mel_bins=32, target_frames=48)


def take(pipeline, n, **kw):
    """The first n (batch, position) of the loader, then closed (workers stopped)."""
    items = iterate(pipeline, **kw)
    try:
        return list(itertools.islice(items, n))
    finally:
        items.close()


def assert_same(a, b):
    assert [pos for _, pos in a] == [pos for _, pos in b]
    for (x, _), (y, _) in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.slow
def test_workers_give_the_in_process_batches_padded():
    src = SyntheticSource(num_examples=24, seed=0, min_seconds=0.1, max_seconds=0.3)
    pipe = Pipeline(src, frontend=FE, batch_size=8, train=True, seed=1, cache=False,
                    augment=Augment(freqm=8, timem=8, mixup=0.5), process_index=0,
                    process_count=1)
    # From a resumed position, across two epoch boundaries (3 batches per epoch).
    in_process = take(pipe, 5, epoch=1, index=2)
    assert [pos for _, pos in in_process] == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1)]
    np.testing.assert_array_equal(in_process[0][0]["x"], pipe.batch(1, 2)["x"])
    assert_same(take(pipe, 5, epoch=1, index=2, worker_count=2), in_process)
    # Eval: one pass, the last batch padded, the same with a worker.
    ev = Pipeline(src, frontend=FE, batch_size=10, train=False, cache=False,
                  process_index=0, process_count=1)
    one_pass = take(ev, 10)
    assert len(one_pass) == 3 and one_pass[-1][0]["mask"].tolist() == [1] * 4 + [0] * 6
    assert_same(take(ev, 10, worker_count=1), one_pass)


@pytest.mark.slow
def test_workers_give_the_in_process_batches_packed():
    src = SyntheticSource(num_examples=12, split="eval", min_seconds=0.2, max_seconds=0.6,
                          sample_rate=16000)
    fe = FrontEnd(num_mel_bins=32, target_frames=64)
    pipe = PackedPipeline(src, frontend=fe, spec=PackSpec(rows=2, max_tokens=40, max_slots=8),
                          train=True, hops_ms=(10.0, 40.0), max_frames=48,
                          token_dropout=0.1, seed=1, cache=False, process_index=0,
                          process_count=1)
    n = pipe.steps(0) + pipe.steps(1) + 1  # into the third epoch (epochs differ in length)
    in_process = take(pipe, n)
    assert in_process[n - 2][1] == (2, 0)  # the last batch is epoch 2's first
    assert_same(take(pipe, n, worker_count=2), in_process)


@pytest.mark.slow
def test_bad_clips_in_workers(tmp_path):
    meta, bad = bad_folder(tmp_path)
    src = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")
    kw = dict(frontend=FE, batch_size=12, cache=False, process_index=0, process_count=1)
    ev = Pipeline(src, train=False, **kw)
    (batch, _), = take(ev, 5, worker_count=1)
    assert sorted(ev.bad_clips) == sorted(bad)  # found in the worker, counted here
    assert all(bad[i] in msg for i, msg in ev.bad_clips.items())
    assert [i for i in range(len(src)) if not batch["mask"][i]] == sorted(bad)
    failing = Pipeline(src, train=True, on_bad_clip="fail", **kw)
    with pytest.raises(AudioError, match=r"audio/[1469]\.wav: .*on_bad_clip='skip'"):
        take(failing, 2, worker_count=1)


@pytest.mark.slow
def test_resume_with_another_worker_count_is_bit_exact(tmp_path):
    def run(workdir, steps, workers):
        c = constant_lr(steps, checkpoint_every=2)
        c.data.cache = False  # the workers decode and featurise
        c.data.worker_count = workers
        return loop.train_and_evaluate(c, str(workdir))["state"]

    straight = run(tmp_path / "a", 4, 0)
    run(tmp_path / "b", 2, 2)  # two steps with two workers, killed ...
    resumed = run(tmp_path / "b", 4, 0)  # ... resumed in-process
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_negative_worker_count_is_refused():
    src = SyntheticSource(num_examples=8, seed=0, min_seconds=0.1, max_seconds=0.2)
    pipe = Pipeline(src, frontend=FE, batch_size=4, train=True, process_index=0,
                    process_count=1)
    with pytest.raises(ValueError, match=r"worker_count=-1"):
        take(pipe, 1, worker_count=-1)


def test_configs_saved_before_worker_count_existed_still_build_pipelines():
    """evaluate.py / distill dump rebuild pipelines from a checkpoint's saved config, which
    lacks data.worker_count when the run predates it: it loads in-process."""
    c = constant_lr(1)
    del c.data["worker_count"]
    pipe = build_pipeline(read_config(c), "train", train=False)
    assert pipe.worker_count == 0 and len(take(pipe, 1)) == 1
