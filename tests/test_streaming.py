"""Streaming inference (fast_ast_jax.streaming, python -m fast_ast_jax.stream).

Fast tests run untrained tiny models (the schedule, chunking, padding, compilation, readers
and errors do not depend on the weights). The slow ones train a tiny AST to tell three
generated sounds apart (a low tone, a high tone, noise), stream low, high, noise, low
through the library and the command (a file, stdin PCM), and require each sound's label
on every hop whose window lies inside that sound, and each change reported within
window + hop of it (computed from the checkpoint and the hop).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf
import soxr

from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.features import features
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError, load_audio
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.models import AST, CNNTeacher
from fast_ast_jax.inference import predict_files
from fast_ast_jax.stream import main as stream_main
from fast_ast_jax.streaming import (Ring, file_chunks, mic_chunks, paced, pcm_chunks,
                                    stream_scores, window_seconds)
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from fast_ast_jax.windows import elastic_row, packed_rows, scorer, window_probs
from tests.helpers import ROOT, load_config

pytestmark = pytest.mark.usefixtures("fast_compile")
SR = 16000
SOUNDS = ("low", "high", "noise")
LABELS = ("a", "b", "c")


def sound(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 at SR: a 250-350 Hz tone, a 2.2-2.8 kHz tone or white noise."""
    t = np.arange(n) / SR
    if kind == "noise":
        x = rng.standard_normal(n) / 3
    else:
        f = rng.uniform(250, 350) if kind == "low" else rng.uniform(2200, 2800)
        x = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return (rng.uniform(0.2, 0.6) * x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def sequence(kinds, *, seconds: float, seed: int = 1):
    """Sounds one after another, `seconds` each: (wave, [(t0, t1, kind), ...])."""
    rng, n = np.random.default_rng(seed), int(SR * seconds)
    wave = np.concatenate([sound(k, n, rng) for k in kinds])
    return wave, [(i * n / SR, (i + 1) * n / SR, k) for i, k in enumerate(kinds)]


@functools.lru_cache(maxsize=None)
def tiny_bundle(kind: str) -> Bundle:
    """An initialised tiny model of `kind` ("ast", "cnn", "elastic") on configs/test.py's
    front-end (weights do not matter: schedule, padding and shapes are tested)."""
    fe = FrontEnd(num_mel_bins=32, target_frames=48)
    key, init = jax.random.PRNGKey(0), lambda model, *a, **kw: jax.jit(
        model.init, static_argnames="train")(key, *a, **kw)["params"]
    if kind == "cnn":
        model = CNNTeacher(num_classes=3, stages="tiny", num_mel_bins=32)
        params = init(model, np.zeros((1, 48, 32), np.float32))
        return Bundle(model=model, params=params, frontend=fe, labels=LABELS)
    if kind == "ast":
        model = AST(width=64, depth=2, num_heads=2, mlp_dim=128, num_mel_bins=32, frames=48,
                    num_classes=3, fstride=16, tstride=16, prune_layers=(0,))
        params = init(model, np.zeros((1, 48, 32), np.float32))
        return Bundle(model=model, params=params, frontend=fe, labels=LABELS)
    config = load_config("test_elastic")
    model = build_model(read_config(config).model, num_classes=3)  # its 32 mel bins
    bundle = Bundle(model=model, params=None, frontend=fe, labels=LABELS, config=config)
    tokens, window = elastic_row(model, bundle)
    x = np.zeros((1, window.target_frames, 32), np.float32)
    rows = packed_rows(x, np.array([window.target_frames]), model=model, tokens=tokens)
    params = init(model, rows, train=False)
    return Bundle(model=model, params=params, frontend=fe, labels=LABELS, config=config)


@contextlib.contextmanager
def compilations():
    """A list that collects one entry per XLA compilation inside the block."""
    seen = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def noisy_tone(n: int, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 500 * np.arange(n) / SR)
            + 0.1 * rng.standard_normal(n)).astype(np.float32)


# --- the library: schedule, chunking, padding, smoothing, resampling ---------------------


def test_ring_keeps_the_last_samples():
    ring, stream = Ring(10), np.arange(57, dtype=np.float32)
    pushed = 0
    for size in (0, 3, 1, 10, 0, 25, 7, 11):  # shorter, as long as, longer than the ring
        ring.push(stream[pushed:pushed + size])
        pushed += size
        for start in range(max(0, pushed - 10), pushed + 1):
            np.testing.assert_array_equal(ring.read(start, pushed), stream[start:pushed])
    assert ring.total == pushed == len(stream)
    with pytest.raises(IndexError):
        ring.read(pushed - 11, pushed)


@pytest.mark.parametrize("kind,on_device,overrides", [
    ("ast", False, {}), ("ast", True, {}), ("ast", False, {"tome_r": 2}),
    ("ast", False, {"prune_keep_rate": 0.5}), ("cnn", False, {}), ("elastic", True, {})])
def test_hops_follow_the_schedule_whatever_the_chunks_in_one_compilation(
        kind, on_device, overrides):
    """Hops every H frames (partial windows first, a last one at the last complete frame),
    the same whether the stream comes whole, in hop-sized or in random chunks (empty and
    1-sample ones among them), and one compilation for the whole stream."""
    sc = scorer(tiny_bundle(kind), batch_size=1, on_device=on_device, **overrides)
    fe = sc.frontend  # the window's front-end (an ElasticAST's row length)
    window, hop_frames = fe.target_frames, max(1, fe.target_frames // 3)
    n = int(window_seconds(fe) * SR) + 4 * hop_frames * fe.hop_size + 3 * fe.hop_size // 2
    wave = noisy_tone(n)
    rng = np.random.default_rng(0)
    cuts = np.cumsum(rng.integers(0, 2 * hop_frames * fe.hop_size, size=n // 500))
    chunkings = {"whole": [wave],
                 "hops": np.split(wave, range(hop_frames * fe.hop_size, n,
                                              hop_frames * fe.hop_size)),
                 "random": [wave[:1], wave[1:1]] + np.split(wave[1:], cuts[cuts < n - 1])}
    with compilations() as compiled:
        runs = {name: list(stream_scores(chunks, scorer=sc, hop_frames=hop_frames))
                for name, chunks in chunkings.items()}
    assert len(compiled) == 1
    frames = num_frames(n, window_size=fe.window_size, hop_size=fe.hop_size)
    ends = [(f - 1) * fe.hop_size + fe.window_size for f in range(hop_frames, frames + 1,
                                                                   hop_frames)]
    if frames % hop_frames:
        ends.append((frames - 1) * fe.hop_size + fe.window_size)
    whole = runs.pop("whole")
    assert [h.end for h in whole] == pytest.approx([e / fe.sample_rate for e in ends])
    assert [h.start for h in whole] == pytest.approx(
        [max(0, e / fe.sample_rate - window_seconds(fe)) for e in ends])
    assert any(h.start > 0 for h in whole) and whole[0].start == 0  # partial, then full
    for name, hops in runs.items():
        assert [(h.start, h.end) for h in hops] == [(h.start, h.end) for h in whole], name
        for h, w in zip(hops, whole):
            np.testing.assert_array_equal(h.scores, w.scores, err_msg=name)


@pytest.mark.parametrize("on_device", [False, True])
def test_windows_score_as_predict_windows_and_short_ones_as_training_clips(on_device,
                                                                           tmp_path):
    """A full window of the stream scores as predict's window at the same place; the
    first, partial one as the training front-end's padded clip of the stream so far."""
    bundle = tiny_bundle("ast")
    sc = scorer(bundle, batch_size=1, on_device=on_device)
    fe, hop_frames = bundle.frontend, 12
    n = int(window_seconds(fe) * SR) + 5 * hop_frames * fe.hop_size
    wave = noisy_tone(n, seed=3)
    sf.write(tmp_path / "clip.wav", wave, SR, subtype="FLOAT")
    hops = list(stream_scores(np.array_split(wave, 9), scorer=sc, hop_frames=hop_frames))
    (clip,) = predict_files([tmp_path / "clip.wav"], checkpoint=bundle, top_k=3,
                            hop_frames=hop_frames, on_device=on_device, workers=0)
    full = [h for h in hops if h.start > 0 or h.end >= window_seconds(fe) - 1e-9]
    assert len(full) == len(clip.windows) == 6
    for h, (t0, t1, top) in zip(full, clip.windows):
        assert (h.start, h.end) == pytest.approx((t0, t1))
        np.testing.assert_allclose(h.scores, [dict(top)[k] for k in LABELS], atol=1e-5)
    first = hops[0]
    padded = features(wave[:round(first.end * SR)], frontend=fe)  # the training input
    logits = bundle.model.apply({"params": bundle.params}, padded[None], train=False)
    np.testing.assert_allclose(first.scores, window_probs(np.asarray(logits),
                                                          multi_label=False)[0], atol=1e-5)


def test_smoothing_is_the_mean_of_the_last_hops():
    sc = scorer(tiny_bundle("cnn"), batch_size=1)
    wave = noisy_tone(SR * 2, seed=5) * np.linspace(0.1, 1, SR * 2, dtype=np.float32)
    alone = np.stack([h.scores for h in stream_scores([wave], scorer=sc, hop_frames=8)])
    smooth = np.stack([h.scores for h in stream_scores([wave], scorer=sc, hop_frames=8,
                                                       smooth=3)])
    expected = [alone[max(0, i - 2):i + 1].mean(axis=0) for i in range(len(alone))]
    np.testing.assert_allclose(smooth, expected, atol=1e-6)
    assert not np.allclose(smooth, alone, atol=1e-3)  # the scores do change over the stream


def test_multi_label_checkpoints_give_sigmoids():
    bundle = tiny_bundle("cnn")
    plain = scorer(bundle, batch_size=1)
    multi = scorer(Bundle(**{**bundle.__dict__, "loss": "sigmoid"}), batch_size=1)
    wave = noisy_tone(SR)
    for soft, sig in zip(stream_scores([wave], scorer=plain, hop_frames=24),
                         stream_scores([wave], scorer=multi, hop_frames=24)):
        assert soft.scores.sum() == pytest.approx(1.0, abs=1e-5)
        logits = np.log(soft.scores)  # softmax logits up to a constant, per class
        np.testing.assert_allclose(np.diff(np.log(sig.scores / (1 - sig.scores))),
                                   np.diff(logits), atol=1e-4)


def test_another_rate_is_resampled_on_the_fly(tmp_path):
    """A 22.05 kHz stream scores as the file resampled whole (audio.io), chunked or not."""
    sc = scorer(tiny_bundle("ast"), batch_size=1)
    t = np.arange(int(22050 * 1.5)) / 22050
    wave = (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t)).astype(np.float32)
    sf.write(tmp_path / "x.wav", wave, 22050, subtype="FLOAT")
    reference = list(stream_scores(file_chunks(tmp_path / "x.wav", sample_rate=SR,
                                               block_samples=800), scorer=sc, hop_frames=12))
    for chunks in ([wave], np.array_split(wave, 41)):
        hops = list(stream_scores(chunks, scorer=sc, hop_frames=12, sample_rate=22050))
        assert [h.end for h in hops] == pytest.approx([h.end for h in reference])
        np.testing.assert_allclose([h.scores for h in hops], [h.scores for h in reference],
                                   atol=2e-3)


def test_paced_chunks_wait_for_their_real_time():
    now, slept = [100.0], []
    clock = lambda: now[0]

    def sleep(s):
        slept.append(round(s, 6))
        now[0] += s
    chunks = [np.zeros(800, np.float32), np.zeros(1600, np.float32), np.zeros(0, np.float32)]
    out = list(paced(chunks, sample_rate=SR, clock=clock, sleep=sleep))
    assert [len(c) for c in out] == [800, 1600, 0] and slept == [0.05, 0.1]


def test_live_streams_keep_up_by_skipping_hops():
    """A scorer slower than real time on a paced (live) stream: with keep_up the hops that
    fell behind are skipped and counted, each line stays within one hop's compute of the
    present, and every scored window is the one an every-hop run scores at that time."""
    sc = scorer(tiny_bundle("ast"), batch_size=1)
    fe, hop_frames = sc.frontend, 4
    hop_s, compute = hop_frames * fe.hop_size / SR, 0.1  # each hop costs 2.5 x its audio
    now = [0.0]

    def slow(rows, lengths):
        now[0] += compute
        return sc.apply(rows, lengths)

    def sleep(s):
        now[0] += s
    wave = noisy_tone(3 * SR)
    chunks = lambda: paced(np.split(wave, range(160, len(wave), 160)), sample_rate=SR,
                           clock=lambda: now[0], sleep=sleep)
    every = {h.end: h.scores for h in stream_scores(chunks(), scorer=sc,
                                                     hop_frames=hop_frames)}
    now[0], lags, hops = 0.0, [], []
    for h in stream_scores(chunks(), scorer=dataclasses.replace(sc, apply=slow),
                           hop_frames=hop_frames, keep_up=True):
        lags.append(now[0] - h.end)
        hops.append(h)
    assert sum(h.skipped for h in hops) > len(hops)  # most hops skipped at 2.5x
    # Not growing with the stream (every hop scored, the last line would come 4.5 s late):
    # a hop's boundary is at most a hop and a chunk before its chunk's end, which waited
    # for the hop before to be computed, then for its own (the last line, the end of the
    # stream's window, comes one computation after the last hop).
    assert max(lags[:-1]) <= hop_s + 160 / SR + 2 * compute + 1e-6
    ends = [h.end for h in hops]
    assert ends == sorted(set(ends)) and ends[-1] == pytest.approx(
        (num_frames(len(wave), window_size=fe.window_size, hop_size=fe.hop_size) - 1)
        * fe.hop_size / SR + fe.window_size / SR)
    for h in hops[:-1]:  # the last one ends at the last frame, between two hops
        np.testing.assert_array_equal(h.scores, every[h.end])


# --- readers and bad input ---------------------------------------------------------------


class Trickle(io.RawIOBase):
    """A pipe that hands out at most `most` bytes a read."""

    def __init__(self, data: bytes, most: int):
        self.data, self.most = data, most

    def readable(self):
        return True

    def read1(self, n=-1):
        out, self.data = self.data[:min(n, self.most)], self.data[min(n, self.most):]
        return out


def test_pcm_reads_as_audio_io_reads_the_same_samples(tmp_path):
    rng = np.random.default_rng(0)
    pcm = rng.integers(-2 ** 15, 2 ** 15, size=(3001, 2), dtype=np.int16)
    sf.write(tmp_path / "x.wav", pcm, SR, subtype="PCM_16")
    expected = load_audio(tmp_path / "x.wav", sample_rate=SR)
    for stream in (io.BytesIO(pcm.astype("<i2").tobytes()), Trickle(pcm.tobytes(), 7)):
        chunks = list(pcm_chunks(stream, format="s16le", channels=2, sample_rate=SR,
                                 block_samples=256))
        assert max(len(c) for c in chunks) <= 256
        np.testing.assert_array_equal(np.concatenate(chunks), expected)
    floats = rng.uniform(-1, 1, size=999).astype("<f4")
    got = np.concatenate(list(pcm_chunks(Trickle(floats.tobytes(), 5), format="f32le",
                                         channels=1, sample_rate=SR, block_samples=100)))
    np.testing.assert_array_equal(got, floats)


def test_bad_streams_are_one_line_errors():
    sc = scorer(tiny_bundle("cnn"), batch_size=1)
    read = lambda data, **kw: list(pcm_chunks(io.BytesIO(data), **{
        "format": "s16le", "channels": 1, "sample_rate": SR, "block_samples": 64, **kw}))
    with pytest.raises(AudioError, match="ended inside a sample frame .*3 stray bytes"):
        read(np.zeros(100, "<i2").tobytes() + b"\0\0\0", channels=2)
    bad = np.zeros(300, "<f4")
    bad[250] = np.nan
    with pytest.raises(AudioError, match=r"NaN or Inf samples at stream second 0\.016"):
        read(bad.tobytes(), format="f32le")
    with pytest.raises(AudioError, match="stdin: empty stream"):
        list(stream_scores(read(b""), scorer=sc, hop_frames=4, name="stdin"))
    with pytest.raises(AudioError, match="before one 25 ms frame"):
        list(stream_scores([np.zeros(399, np.float32)], scorer=sc, hop_frames=4))
    for hop in (0, 49):
        with pytest.raises(ValueError, match=f"a hop of {hop} frames: use 1 to 48"):
            stream_scores([], scorer=sc, hop_frames=hop)
    with pytest.raises(ValueError, match="smooth=0"):
        stream_scores([], scorer=sc, hop_frames=4, smooth=0)


def test_microphone_without_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when absent
    with pytest.raises(AudioError, match=r'pip install "fast_ast_jax\[mic\]"'):
        next(mic_chunks(sample_rate=SR, block_samples=800))


def test_microphone_that_cannot_open_names_it(monkeypatch):
    """With the real sounddevice where it is installed (the mic extra and PortAudio), else
    with a stand-in that refuses an unknown device as sounddevice does (ValueError)."""
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        def refuse(*, device, **_):
            raise ValueError(f"No input device matching {device!r}")

        monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(
                PortAudioError=type("PortAudioError", (Exception,), {}), InputStream=refuse))
    with pytest.raises(AudioError, match="input device 'no such mic' cannot open at 16000 Hz"
                                         ".*--list_devices"):
        next(mic_chunks(sample_rate=SR, device="no such mic", block_samples=800))


@pytest.mark.parametrize("argv,message", [
    ([], "no input: give exactly one of '-'"),
    (["-", "--mic"], "- and --mic: give exactly one"),
    (["x.wav"], "x.wav: give '-' to read PCM from stdin"),
    (["-"], "--checkpoint is required"),
    (["-", "--realtime"], "--realtime paces --file"),
    (["--file", "x.wav", "--sample_rate", "8000"], "a file's own header gives them"),
    (["-", "--sample_rate", "0"], "--sample_rate=0: must be >= 1"),
    (["-", "--hop_s", "-1"], "--hop_s=-1.0: must be > 0 seconds"),
    (["-", "--device", "2"], "--device picks the microphone: add --mic"),
])
def test_command_usage_errors(argv, message, capsys):
    argv = argv + ([] if message.startswith("--checkpoint") or not argv
                   else ["--checkpoint", "w"])
    with pytest.raises(SystemExit) as exit_:
        stream_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert message in err[0], err


def test_command_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        stream_main(["--file", "x.wav", "--checkpoint", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "nope does not exist" in err[0]


# --- a trained model: labels at the right times, the command end to end ----------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-block configs/test.py AST trained (20 steps) on 48 clips of the three sounds,
    0.1-0.6 s long (the first, partial windows of a stream are short clips)."""
    from fast_ast_jax.train import loop

    root = tmp_path_factory.mktemp("sounds")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(48):
        kind = SOUNDS[i % 3]
        sf.write(root / "audio" / f"{i}.wav", sound(kind, int(SR * rng.uniform(0.1, 0.6)),
                                                    rng), SR)
        rows.append((f"{i}.wav", kind))
    with open(root / "meta.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label")] + rows)
    c = load_config("test")
    c.data.source = "folder"
    c.data.train = {"csv_path": str(root / "meta.csv"), "audio_dir": str(root / "audio")}
    c.data.eval = {}
    c.model.depth = 2
    c.update(num_steps=20, checkpoint_every=1000, log_every=10)
    c.optim.update(warmup_steps=0, schedule="constant")
    loop.train_and_evaluate(c, str(root / "work"))
    return root / "work"


def check_times(hops, segments, *, window: float, latency: float) -> None:
    """hops: (start, end, label). Every hop whose whole window (`window` seconds: partial
    ones at the start may be shorter than any training clip) lies inside one sound reports
    it, and each change of sound is reported within `latency` of it (windows across a
    change hold a mixture no training clip had: any label)."""
    inside = 0
    for start, end, label in hops:
        within = [k for t0, t1, k in segments if t0 - 1e-9 <= start and end <= t1 + 1e-9]
        if within and end - start >= window - 1e-9:
            assert label == within[0], (start, end, label, segments)
            inside += 1
    assert inside >= len(hops) // 2, (inside, len(hops))
    for change, _, kind in segments[1:]:
        reported = next(end for start, end, label in hops if end > change and label == kind)
        assert reported - change <= latency, (change, kind, reported, latency)


@pytest.mark.slow
def test_labels_change_at_the_right_times(trained):
    from fast_ast_jax import checkpoints

    bundle = checkpoints.load_classifier(trained)
    sc = scorer(bundle, batch_size=1)
    fe, hop_frames = sc.frontend, 10
    latency = window_seconds(fe) + hop_frames * fe.hop_size / fe.sample_rate
    wave, segments = sequence(["low", "high", "noise", "low", "noise"], seconds=1.2)
    chunks = np.split(wave, np.cumsum(np.random.default_rng(2).integers(1, 3000, 100)))
    with compilations() as compiled:
        hops = [(h.start, h.end, bundle.labels[int(np.argmax(h.scores))])
                for h in stream_scores(chunks, scorer=sc, hop_frames=hop_frames)]
    assert len(compiled) == 1
    check_times(hops, segments, window=window_seconds(fe), latency=latency)


def _run(argv, *, env, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fast_ast_jax.stream", *argv], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE if stdin is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def env(tmp_path):
    return {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": os.environ["PATH"],
            "HOME": str(tmp_path)}


@pytest.mark.slow
def test_command_streams_a_file_and_stdin_pcm(trained, tmp_path, env):
    """--file (a 22.05 kHz stereo FLAC, --jsonl) and stdin (16 kHz s16le) in the pipe:
    a line per hop, each at its time, labels at the right times."""
    from fast_ast_jax import checkpoints

    fe = checkpoints.load(trained).frontend
    wave, segments = sequence(["noise", "low", "high", "low"], seconds=1.2, seed=4)
    other = soxr.resample(wave, SR, 22050)  # the same stream at another rate, two channels
    sf.write(tmp_path / "r.flac", np.stack([other, 0.5 * other], axis=1), 22050)
    pcm = np.clip(np.round(wave * 2 ** 15), -2 ** 15, 2 ** 15 - 1).astype("<i2").tobytes()
    hop_frames = 20
    latency = window_seconds(fe) + hop_frames * fe.hop_size / SR
    runs = {
        "file": _run(["--checkpoint", str(trained), "--file", str(tmp_path / "r.flac"),
                      "--hop_frames", str(hop_frames), "--jsonl", "--tome_r", "1"], env=env),
        "stdin": _run(["--checkpoint", str(trained), "-", "--hop_s",
                       str(hop_frames * fe.frame_shift_ms / 1000), "--top_k", "3",
                       "--block_s", "0.013"], env=env, stdin=pcm),
    }
    out, err = runs["stdin"].communicate(pcm, timeout=300)
    lines = out.decode().splitlines()
    assert runs["stdin"].returncode == 0, err.decode()
    assert "within window + hop" in err.decode()
    frames = num_frames(len(wave), window_size=fe.window_size, hop_size=fe.hop_size)
    assert len(lines) == -(-frames // hop_frames)
    parsed = [(float(line.split()[0]), line.split()[2]) for line in lines]
    assert all(len(line.split(",")) == 3 for line in lines)
    check_times([(max(0.0, end - window_seconds(fe)), end, label) for end, label in parsed],
                segments, window=window_seconds(fe), latency=latency)
    out, err = runs["file"].communicate(timeout=300)
    assert runs["file"].returncode == 0, err.decode()
    rows = [json.loads(line) for line in out.decode().splitlines()]
    assert len(rows) == len(lines) and {len(r["labels"]) for r in rows} == {1}
    check_times([(r["start"], r["end"], r["labels"][0]) for r in rows], segments,
                window=window_seconds(fe), latency=latency)


@pytest.mark.slow
def test_command_bad_inputs_and_ctrl_c(trained, tmp_path, env):
    """One `error:` line and status 2 for each bad input; Ctrl-C stops with status 130."""
    from fast_ast_jax.train import loop

    c = load_config("test_pretrain")
    c.update(num_steps=1, checkpoint_every=1)
    loop.train_and_evaluate(c, str(tmp_path / "mae"))
    (tmp_path / "tone.wav").write_bytes(b"RIFF not audio")
    w = ["--checkpoint", str(trained)]
    cases = {  # name: (argv, stdin bytes, what the error line says)
        "odd PCM": (w + ["-"], b"\0" * 2001, "ended inside a sample frame (1 stray bytes"),
        "empty stdin": (w + ["-"], b"", "stdin: empty stream"),
        "f32 NaN": (w + ["-", "--format", "f32le"], np.full(500, np.nan, "<f4").tobytes(),
                    "NaN or Inf samples at stream second 0.000"),
        "mae checkpoint": (["--checkpoint", str(tmp_path / "mae"), "-"], b"",
                           "masked-pretraining"),
        "bad file": (w + ["--file", str(tmp_path / "tone.wav")], None, "cannot decode audio"),
        "long hop": (w + ["-", "--hop_s", "9"], b"", "a hop of 900 frames: use 1 to 48"),
        "microphone": (["--checkpoint", str(trained), "--mic", "--device", "no such mic"],
                        None, "cannot open"),
    }
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        cases["microphone"] = (w + ["--mic"], None, "the microphone needs the sounddevice")
    procs = {name: _run(argv, env=env, stdin=data) for name, (argv, data, _) in cases.items()}
    # Ctrl-C while stdin is still open: the lines so far, then status 130.
    live = _run(w + ["-", "--hop_frames", "8"], env=env, stdin=b"")
    live.stdin.write(np.zeros(SR, "<i2").tobytes())
    live.stdin.flush()
    first = live.stdout.readline()
    live.send_signal(signal.SIGINT)
    out, err = live.communicate(timeout=60)
    assert first.decode().split()[1] == "s" and live.returncode == 130, err.decode()
    assert err.decode().splitlines()[-1].startswith("stopped by Ctrl-C after ")
    for name, proc in procs.items():
        data = cases[name][1]
        out, err = proc.communicate(data, timeout=300)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, err.decode())
        assert lines[0].startswith("error: ") and cases[name][2] in lines[0], (name, lines)


@pytest.mark.slow
def test_stream_benchmark_runs(capsys):
    """benchmarks/stream.py on the demo model, a short stream, with ToMe, 2 rounds: its
    table, with `uptime`."""
    from benchmarks import stream as stream_bench

    row, tome = stream_bench.main(["--models", "demo", "--seconds", "3", "--hop_s", "0.5",
                                   "--tome", "--rounds", "2"])
    assert tome["model"].startswith("demo ToMe r=") and tome["hops"] == row["hops"]
    assert tome["gmacs_per_hop"] < row["gmacs_per_hop"]
    frames = num_frames(3 * SR, window_size=400, hop_size=160)  # the demo's 25 / 10 ms
    assert row["hops"] == -(-frames // 50) and row["window_s"] == pytest.approx(1.295)
    assert row["rtf"] > 0 and 0 < row["latency_median_ms"] <= row["latency_p95_ms"]
    assert row["gmacs_per_hop"] > 0
    out = capsys.readouterr().out
    assert "load average" in out and "| demo | 1.29 | 0.50 |" in out
