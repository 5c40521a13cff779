"""Data sources, the batching pipeline and augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax.audio import augment
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import (SOURCE_CLASSES, SOURCES, FolderSource, SyntheticSource,
                               make_source)
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.data.synthetic import CLASSES
from fast_ast_jax.train import loop

from tests.helpers import config, write_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FE = FrontEnd(num_mel_bins=32, target_frames=48)


def test_synthetic_is_deterministic_varied_and_balanced():
    src = SyntheticSource(num_examples=16, seed=3, sample_rate=16000)
    a, b = src[5], src[5]
    np.testing.assert_array_equal(a["audio"], b["audio"])
    assert a["audio"].dtype == np.float32 and a["audio"].ndim == 1
    assert len({len(src[i]["audio"]) for i in range(16)}) > 8  # variable length
    assert sorted(src[i]["label"] for i in range(16)) == sorted(list(range(8)) * 2)
    assert len(CLASSES) >= 8 and src.labels == list(CLASSES)
    other = SyntheticSource(num_examples=16, seed=3, split="eval")
    assert not np.array_equal(other[5]["audio"][:100], a["audio"][:100])
    for i in range(8):  # every class renders, finite, not silent
        x = src[i]["audio"]
        assert np.isfinite(x).all() and np.abs(x).max() > 0.1


def test_folder_source_selects_labels_and_resamples(tmp_path):
    rows = [(f"{i}.wav", lab, fold) for i, (lab, fold) in
            enumerate([("dog", "1"), ("cat", "1"), ("dog", "2"), ("bird", "2")])]
    meta = write_folder(tmp_path, rows)
    src = make_source("folder", sample_rate=16000, csv_path=meta, audio_dir=tmp_path / "audio",
                      select={"fold": "2"})
    assert len(src) == 2 and src.labels == ["bird", "cat", "dog"]  # labels from all rows
    ex = src[1]
    assert ex["label"] == 0 and ex["id"] == "3.wav"
    n = sf.info(tmp_path / "audio" / "3.wav").frames
    assert abs(len(ex["audio"]) - 2 * n) <= 2  # 8 kHz -> 16 kHz
    both = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio", select={"fold": ["1", "2"]},
                        labels=["dog", "cat", "bird"])
    assert len(both) == 4 and both[0]["label"] == 0


def test_folder_source_multi_label(tmp_path):
    meta = write_folder(tmp_path, [("a.wav", "x;y", "1"), ("b.wav", "z", "1")])
    src = FolderSource(csv_path=meta, audio_dir=tmp_path / "audio", multi_label=True)
    np.testing.assert_array_equal(src[0]["label"], [1, 1, 0])
    with pytest.raises(ValueError, match="multi_label"):
        FolderSource(csv_path=meta, audio_dir=tmp_path / "audio")


def test_folder_source_errors(tmp_path):
    meta = write_folder(tmp_path, [("a.wav", "x", "1"), ("b.wav", "y", "1")])
    audio = tmp_path / "audio"
    with pytest.raises(ValueError, match="no column 'split'"):
        FolderSource(csv_path=meta, audio_dir=audio, select={"split": "train"})
    with pytest.raises(ValueError, match="unknown label"):
        FolderSource(csv_path=meta, audio_dir=audio, labels=["x"])
    with pytest.raises(ValueError, match="no rows match"):
        FolderSource(csv_path=meta, audio_dir=audio, select={"fold": "9"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderSource(csv_path=tmp_path / "nope.csv")
    (audio / "b.wav").unlink()
    with pytest.raises(FileNotFoundError, match="b.wav"):
        FolderSource(csv_path=meta, audio_dir=audio)


def test_unlabeled_sources_yield_empty_targets(tmp_path):
    """A CSV without labels (label_column="") or a bare folder of audio: no label names,
    (0,) labels, and pipelines whose targets are (B, 0) - what pretraining takes."""
    rows = [("a.wav", "x", "1"), ("b.wav", "y", "1"), ("c.wav", "x", "2")]
    meta = write_folder(tmp_path, rows, header=("filename", "kind", "fold"))
    audio = tmp_path / "audio"
    with pytest.raises(ValueError, match="no column 'label'.*label_column=''"):
        FolderSource(csv_path=meta, audio_dir=audio)
    src = FolderSource(csv_path=meta, audio_dir=audio, label_column="", select={"fold": "1"})
    assert len(src) == 2 and src.labels == [] and not src.multi_label
    assert src[1]["id"] == "b.wav" and src[1]["label"].shape == (0,)

    (audio / "sub").mkdir()
    (audio / "c.wav").rename(audio / "sub" / "c.wav")
    (audio / "notes.txt").write_text("not audio")
    folder = make_source("folder", sample_rate=16000, audio_dir=audio)
    assert folder.ids == ["a.wav", "b.wav", "sub/c.wav"] and folder.labels == []
    assert folder[2]["audio"].ndim == 1 and folder[2]["label"].shape == (0,)
    train = Pipeline(folder, frontend=FE, batch_size=2, train=True, seed=1,
                     augment=Augment(freqm=4, timem=4, mixup=1.0))
    batch = train.batch(0, 0)
    assert batch["x"].shape == (2, 48, 32) and batch["y"].shape == (2, 0)
    evaluation = Pipeline(folder, frontend=FE, batch_size=2, train=False)
    last = evaluation.batch(0, 1)  # padded: one clip, one filler
    assert last["y"].shape == (2, 0) and list(last["mask"]) == [1.0, 0.0]

    with pytest.raises(ValueError, match="labels .* for unlabeled audio"):
        FolderSource(audio_dir=audio, labels=["x"])
    with pytest.raises(ValueError, match="select .* needs a CSV"):
        FolderSource(audio_dir=audio, select={"fold": "1"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files .* under"):
        FolderSource(audio_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="audio folder"):
        FolderSource(audio_dir=tmp_path / "nope")


def test_fsdd_meta_csv():
    fsdd = SHARED / "fsdd"
    if not (fsdd / "meta.csv").is_file():
        pytest.skip(reason="../shared/data/fsdd is absent "
                           "(same behaviour covered on generated audio)")
    held_out = FolderSource(csv_path=fsdd / "meta.csv", select={"fold": "test"})
    official = FolderSource(csv_path=fsdd / "meta.csv", select={"official_split": "test"})
    assert (len(held_out), len(official)) == (500, 300)
    assert held_out.labels == [str(d) for d in range(10)]
    ex = held_out[0]
    assert ex["audio"].dtype == np.float32 and 0.1 * 16000 < len(ex["audio"]) < 2.5 * 16000


def pipeline(n=24, batch=8, train=True, **kw):
    src = SyntheticSource(num_examples=n, seed=0, min_seconds=0.1, max_seconds=0.3)
    return Pipeline(src, frontend=FE, batch_size=batch, train=train, seed=1,
                    process_index=kw.pop("process_index", 0),
                    process_count=kw.pop("process_count", 1), **kw)


def test_pipeline_shapes_shuffle_and_resume():
    p = pipeline(augment=Augment(freqm=8, timem=8, mixup=0.5))
    assert p.steps_per_epoch == 3
    b = p.batch(0, 0)
    assert b["x"].shape == (8, 48, 32) and b["y"].shape == (8, 8) and b["mask"].all()
    np.testing.assert_array_equal(b["x"], pipeline(augment=p.augment).batch(0, 0)["x"])
    assert not np.array_equal(p.batch(0, 0)["y"], p.batch(1, 0)["y"])  # reshuffled
    full = [(bt["x"], pos) for _, (bt, pos) in zip(range(7), p.iterate())]
    resumed = [(bt["x"], pos) for (bt, pos), _ in zip(p.iterate(epoch=1, index=1), range(3))]
    for (x1, p1), (x2, p2) in zip(full[4:], resumed):
        np.testing.assert_array_equal(x1, x2)
        assert p1 == p2
    assert [pos for _, pos in full[:4]] == [(0, 1), (0, 2), (1, 0), (1, 1)]


def test_pipeline_hosts_partition_the_global_batch():
    one = pipeline(process_count=1)
    halves = [pipeline(process_index=i, process_count=2) for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([h.batch(2, 1)["x"] for h in halves]), one.batch(2, 1)["x"])


def test_eval_pipeline_pads_with_mask():
    p = pipeline(n=10, batch=4, train=False)
    batches = [b for b, _ in p.iterate()]
    assert len(batches) == 3 and batches[-1]["mask"].tolist() == [1, 1, 0, 0]
    assert batches[-1]["y"][2:].sum() == 0


def test_feature_cache_file(tmp_path):
    p = pipeline(cache_dir=tmp_path, cache_key="k")
    files = list(tmp_path.glob("clips-*.npz"))
    assert len(files) == 1
    q = pipeline(cache_dir=tmp_path, cache_key="k")
    np.testing.assert_array_equal(p.example(3)[0], q.example(3)[0])


def test_cache_file_is_read_only_for_its_clips(tmp_path):
    """A cache file of another clip count (the source changed, its key did not) is
    featurised again and replaced; a file of an earlier layout is left alone."""
    np.savez(tmp_path / "features-0123456789abcdef.npz", x=np.zeros(3))
    pipeline(n=12, cache_dir=tmp_path, cache_key="k")
    [path] = tmp_path.glob("clips-*.npz")
    p = pipeline(n=16, cache_dir=tmp_path, cache_key="k")
    np.testing.assert_array_equal(p.batch(0, 1)["x"], pipeline(n=16).batch(0, 1)["x"])
    with np.load(path) as f:
        assert len(f["offsets"]) == 16 + 1


def test_spec_augment_and_mixup():
    rng = np.random.default_rng(0)
    x = np.zeros((50, 20), np.float32)
    masked = [augment.spec_augment(x, freqm=10, timem=20, fill=1.0, rng=rng)
              for _ in range(20)]
    for m in masked:
        cols, rows = np.where(m.all(axis=0))[0], np.where(m.all(axis=1))[0]
        for idx in (cols, rows):  # one contiguous band each
            assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
        assert len(cols) < 10 and len(rows) < 20
    assert any(m.any() for m in masked)
    y1, y2 = np.eye(3)[0], np.eye(3)[2]
    xm, ym = augment.mixup(np.ones((2, 2)), y1, np.zeros((2, 2)), y2, rng=rng)
    assert np.isclose(ym.sum(), 1.0) and np.allclose(xm, ym[0]) and 0.2 < ym[0] < 0.8
    with pytest.raises(ValueError, match="probability"):
        Augment(mixup=1.5)


@pytest.mark.slow
def test_training_imports_do_not_load_tensorflow():
    import subprocess
    import sys

    code = ("import sys, fast_ast_jax.train.loop, fast_ast_jax.train.evaluation, "
            "fast_ast_jax.predict; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "False"


def test_make_source_rejects_unknown_arguments():
    with pytest.raises(ValueError, match=r"no argument\(s\) \['csv_path'\].*num_examples"):
        make_source("synthetic", sample_rate=16000, num_examples=4, csv_path="x.csv")
    with pytest.raises(ValueError, match="unknown data source 'hf'"):
        make_source("hf", sample_rate=16000)


class ToneSource:
    """A data source written here, as a user would add one: `n` half-second tones, "low"
    (300 Hz) or "high" (1200 Hz)."""

    labels, multi_label = ["low", "high"], False

    def __init__(self, *, n: int, sample_rate: int = 16000):
        self.n, self.sample_rate = n, sample_rate

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        t = np.arange(self.sample_rate // 2) / self.sample_rate
        audio = 0.5 * np.sin(2 * np.pi * (300 + 900 * (i % 2)) * t)
        return {"id": f"tone-{i}", "audio": audio.astype(np.float32), "label": i % 2}


@pytest.fixture
def tone_source(monkeypatch):
    """ToneSource registered as config.data.source="tone": one table entry."""
    monkeypatch.setitem(SOURCE_CLASSES, "tone", f"{__name__}:ToneSource")


def test_a_new_source_is_one_table_entry(tone_source):
    assert "tone" in SOURCES
    source = make_source("tone", sample_rate=16000, n=3)
    assert isinstance(source, ToneSource) and len(source) == 3
    with pytest.raises(ValueError, match=r"source 'tone' has no argument\(s\) \['seed'\]"):
        make_source("tone", sample_rate=16000, n=3, seed=1)


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compile")
def test_training_on_a_new_source(tone_source, tmp_path):
    c = config(num_steps=1)
    c.data.source = "tone"
    c.data.train, c.data.eval = {"n": 16}, {"n": 6}
    final = loop.train_and_evaluate(c, str(tmp_path))
    assert final["step"] == 1 and np.isfinite(final["train_loss"])
    assert final["eval_num_clips"] == 6


def test_uncached_training_batch_decodes_each_clip_once():
    """Without the cache (AudioSet), a training batch reads and featurises each of its
    clips once: choosing a good clip must not decode it a second time to use it."""
    class Counting(SyntheticSource):
        reads = 0

        def __getitem__(self, index):
            Counting.reads += 1
            return super().__getitem__(index)

    src = Counting(num_examples=24, seed=0, min_seconds=0.1, max_seconds=0.3)
    p = Pipeline(src, frontend=FE, batch_size=8, train=True, seed=1, cache=False,
                 process_index=0, process_count=1)
    Counting.reads = 0
    p.batch(0, 0)
    assert Counting.reads == 8
