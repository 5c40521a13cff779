"""On-device front-end: parity of fbank_jax with the NumPy fbank, batched augmentation, the
waveform pipeline, and training / predicting with config.frontend.on_device."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.audio import FrontEnd, features, prepare_waveform
from fast_ast_jax.audio import augment_jax
from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.fbank_jax import (device_features, log_mel, pad_waves,
                                          samples_for_frames, spectrum_matrix)
from fast_ast_jax.data import SyntheticSource
from fast_ast_jax.data.pipeline import Pipeline

PARITY = 1e-4  # max |diff| on normalised features (issue 13)


def _clip(seconds: float, sr: int, *, seed: int) -> np.ndarray:
    """Noise + two tones, digital silence, and a DC offset under faint noise (the cases
    where float32 DC removal and FFTs lose digits), at rate `sr`."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    wave = rng.uniform(0.001, 0.3) * rng.standard_normal(n)
    for freq in rng.uniform(100.0, min(7000.0, sr / 2 - 100), size=2):
        wave += rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * freq * t + rng.uniform(0, np.pi))
    wave[n // 4: n // 4 + n // 5] = 0.0
    wave[n // 2: n // 2 + n // 10] = 0.3 + 1e-4 * rng.standard_normal(n // 10)
    return wave.astype(np.float32)


def _device(waves: list[np.ndarray], frontend: FrontEnd, key=None) -> np.ndarray:
    batch = pad_waves(waves, samples=samples_for_frames(frontend.target_frames,
                                                        frontend=frontend))
    fn = jax.jit(lambda w, n, k: device_features(w, frontend=frontend, lengths=n, key=k))
    return np.asarray(fn(batch["wave"], batch["wave_len"], key))


@pytest.mark.slow
def test_parity_with_numpy_frontend_per_rate_and_length(record_property):
    fe = FrontEnd()
    cases = [(sr, s) for sr in (8000, 16000, 44100) for s in (1, 5, 10, 12)]
    # Input resampled on the host first, as load_audio does; the device starts there.
    waves = [prepare_waveform(_clip(s, sr, seed=i), sr=sr, sample_rate=fe.sample_rate)
             for i, (sr, s) in enumerate(cases)]
    ours = _device(waves, fe)
    assert ours.shape == (len(cases), 1024, 128) and ours.dtype == np.float32
    for (sr, s), wave, out in zip(cases, waves, ours):
        diff = float(np.abs(out - features(wave, frontend=fe)).max())
        print(f"fbank_jax parity {sr:>5} Hz {s:>2} s: max|diff| = {diff:.2e}")
        record_property(f"max_abs_diff_{sr}Hz_{s}s", diff)
        assert diff <= PARITY, (sr, s, diff)


@pytest.mark.parametrize("fe", [
    FrontEnd(sample_rate=8000, num_mel_bins=40, window="hamming", target_frames=60),
    FrontEnd(window="povey", preemphasis=0.0, remove_dc_offset=False, num_mel_bins=64,
             low_freq=100.0, high_freq=-400.0, target_frames=50),
], ids=["8k-hamming", "povey-plain"])
def test_parity_other_settings_and_short_clips(fe):
    rng = np.random.default_rng(1)
    need = samples_for_frames(fe.target_frames, frontend=fe)
    # Longer than needed, exactly needed, a few frames, under one window.
    lengths = [need + 999, need, fe.window_size + 3 * fe.hop_size + 7, fe.window_size - 1]
    waves = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    waves[0][:500] += 0.5  # DC offset
    ours = _device(waves, fe)
    for wave, out in zip(waves, ours):
        np.testing.assert_allclose(out, features(wave, frontend=fe), atol=PARITY, rtol=0)
    np.testing.assert_allclose(ours[3], (0.0 - fe.mean) / (2 * fe.std), rtol=1e-6)  # 0 frames


def test_spectrum_matrix_is_the_kaldi_chain():
    fe = FrontEnd(sample_rate=8000, target_frames=4)
    frame = np.random.default_rng(0).standard_normal(fe.window_size)
    y = frame - frame.mean()
    y = y - fe.preemphasis * np.concatenate([y[:1], y[:-1]])
    from fast_ast_jax.audio.fbank import fft_size, window_function

    ref = np.fft.rfft(y * window_function("hanning", fe.window_size),
                      n=fft_size(fe.window_size))
    np.testing.assert_allclose(frame @ spectrum_matrix(fe),
                               np.concatenate([ref.real, ref.imag]), atol=1e-9)


def test_dither_draws_from_the_key_like_the_host():
    fe = FrontEnd(dither=1.0, target_frames=30, num_mel_bins=32)
    silence = [np.zeros(samples_for_frames(30, frontend=fe), np.float32)]
    a = _device(silence, fe, jax.random.PRNGKey(0))
    b = _device(silence, fe, jax.random.PRNGKey(0))
    c = _device(silence, fe, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    host = features(silence[0], frontend=fe, rng=np.random.default_rng(0))
    # Same distribution: the mean log-mel of dithered silence agrees closely.
    assert abs(float(a.mean()) - float(host.mean())) < 0.02
    with pytest.raises(ValueError, match="dither"):
        log_mel(jnp.zeros((1, 1000)), frontend=fe)


def test_spec_augment_masks_one_band_each_per_example():
    x = jnp.zeros((64, 40, 16))
    out = np.asarray(augment_jax.spec_augment(x, key=jax.random.PRNGKey(3), freqm=6,
                                              timem=9, fill=1.0))
    freq = (out == 1.0).all(axis=1)  # (B, bins): masked for every frame
    time = (out == 1.0).all(axis=2)  # (B, frames)
    for widths, cap in ((freq.sum(1), 6), (time.sum(1), 9)):
        assert widths.max() < cap and widths.max() > 0 and len(set(widths)) > 2
    # Each mask is one contiguous band.
    for row in np.concatenate([freq, time], axis=1)[:, :16]:
        idx = np.flatnonzero(row)
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
    same = augment_jax.spec_augment(x, key=jax.random.PRNGKey(3), freqm=0, timem=0, fill=1.)
    np.testing.assert_array_equal(same, x)


@pytest.mark.slow
def test_mixup_mixes_features_labels_and_teacher_alike():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((32, 5, 3)), jnp.float32)
    y = jnp.asarray(np.eye(4)[rng.integers(0, 4, 32)], jnp.float32)
    t = jnp.asarray(rng.standard_normal((32, 4)), jnp.float32)
    out = augment_jax.mixup({"x": x, "y": y, "teacher": t}, key=jax.random.PRNGKey(0),
                            prob=0.5, alpha=10.0)
    np.testing.assert_allclose(np.asarray(out["y"]).sum(1), 1.0, rtol=1e-6)
    mixed = np.flatnonzero(np.abs(np.asarray(out["x"] - x)).max(axis=(1, 2)) > 0)
    assert 4 < len(mixed) < 28  # about half
    # One weight and partner per row for all three arrays: fit (lam, partner) on x.
    for b in mixed[:5]:
        found = None
        for j in set(range(32)) - {b}:
            d = np.asarray(x[b] - x[j]).ravel()
            lam = float(np.dot(np.asarray(out["x"][b] - x[j]).ravel(), d) / np.dot(d, d))
            if np.allclose(out["x"][b], lam * x[b] + (1 - lam) * x[j], atol=1e-5):
                found = lam
                for k, a in (("y", y), ("teacher", t)):
                    np.testing.assert_allclose(out[k][b], lam * a[b] + (1 - lam) * a[j],
                                               atol=1e-5)
                break
        assert found is not None and 0.1 < found < 0.9
    none = augment_jax.mixup({"x": x}, key=jax.random.PRNGKey(0), prob=0.0, alpha=10.0)
    np.testing.assert_array_equal(none["x"], x)


def test_noise_and_roll_rolls_each_example_and_adds_small_noise():
    x = jnp.tile(jnp.arange(40.0)[None, :, None], (16, 1, 2))
    out = np.asarray(augment_jax.noise_and_roll(x, key=jax.random.PRNGKey(0)))
    noise = out - np.round(out)
    assert noise.min() >= 0 and noise.max() < 0.1
    shifts = {int((np.round(out[b, 0, 0]) * -1) % 40) for b in range(16)}
    assert len(shifts) > 3 and all(s < 10 or s >= 30 for s in shifts)  # in [-10, 9]


@pytest.mark.slow
def test_wave_pipeline_and_device_batch_equal_host_features():
    fe = FrontEnd(num_mel_bins=32, target_frames=48)
    src = SyntheticSource(num_examples=6, seed=0, sample_rate=16000, min_seconds=0.2,
                          max_seconds=0.7)
    kw = dict(frontend=fe, batch_size=4, train=False, process_index=0, process_count=1)
    host = Pipeline(src, **kw).batch(0, 1)  # the padded last batch: 2 real, 2 masked
    wave = Pipeline(src, waves=True, **kw).batch(0, 1)
    assert set(wave) == {"wave", "wave_len", "y", "mask"}
    assert wave["wave"].shape == (4, samples_for_frames(48, frontend=fe))
    assert list(wave["wave_len"][2:]) == [0, 0]
    out = jax.jit(lambda b: augment_jax.device_batch(b, frontend=fe))(wave)
    np.testing.assert_allclose(np.asarray(out["x"])[:2], host["x"][:2], atol=PARITY, rtol=0)
    np.testing.assert_array_equal(out["y"], host["y"])
    train = Pipeline(src, waves=True, augment=Augment(freqm=4, timem=4, mixup=0.5),
                     **{**kw, "train": True}).batch(0, 0)
    assert train["wave"].dtype == np.float32 and train["wave_len"].dtype == np.int32
    aug = augment_jax.device_batch(train, frontend=fe, key=jax.random.PRNGKey(0),
                                   augment=Augment(freqm=4, timem=4, mixup=0.5))
    assert aug["x"].shape == (4, 48, 32) and np.isfinite(np.asarray(aug["x"])).all()
    with pytest.raises(ValueError, match="cache_dir"):
        Pipeline(src, waves=True, cache_dir="somewhere", **kw)


@pytest.mark.usefixtures("fast_compile")
@pytest.mark.slow
def test_training_on_device_records_it_and_predicts(tmp_path):
    from fast_ast_jax.inference import predict
    from fast_ast_jax.train import loop
    from tests.helpers import load_config, write_folder

    c = load_config("test")
    c.num_steps = 2
    c.frontend.on_device = True
    c.augment.update(freqm=4, timem=4, mixup=0.5)
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    assert final["step"] == 2 and np.isfinite(final["train_loss"])
    assert 0.0 <= final["eval_accuracy"] <= 1.0
    from fast_ast_jax.checkpoints import load as load_checkpoint
    from fast_ast_jax.train.evaluation import evaluate_checkpoint

    restored = load_checkpoint(tmp_path / "w")
    assert restored.frontend.on_device is True
    # evaluate.py computes host features: same accuracy as the on-device eval.
    rows = evaluate_checkpoint(tmp_path / "w", echo=None)
    assert rows[0]["accuracy"] == pytest.approx(final["eval_accuracy"])
    write_folder(tmp_path / "clips", [("a.wav", "x", "1")], sr=22050)
    out = predict([tmp_path / "clips" / "audio" / "a.wav"], checkpoint=tmp_path / "w",
                  top_k=2)
    assert len(out[0]) == 2


def test_on_device_field_keeps_old_checkpoints_and_feature_caches(tmp_path):
    from fast_ast_jax.train.loop import check_resumable

    # Feature caches are keyed by the fields that change features: not by on_device.
    old_key = json.dumps({k: v for k, v in FrontEnd().to_dict().items() if k != "on_device"},
                         sort_keys=True)
    assert FrontEnd(on_device=True).features_json() == FrontEnd().features_json() == old_key

    meta = {"model": {}, "frontend": FrontEnd().to_dict(), "labels": ["a"], "loss": "softmax"}
    old = json.loads(json.dumps(meta))
    del old["frontend"]["on_device"]
    check_resumable(old, meta, directory=tmp_path)  # an older checkpoint: no error
    on = {**meta, "frontend": FrontEnd(on_device=True).to_dict()}
    with pytest.raises(ValueError, match="on_device"):
        check_resumable(old, on, directory=tmp_path)


def test_packed_training_refuses_on_device(tmp_path):
    from fast_ast_jax.train import loop
    from tests.helpers import load_config

    c = load_config("test_elastic")
    c.frontend.on_device = True
    with pytest.raises(ValueError, match="on_device"):
        loop.train_and_evaluate(c, str(tmp_path / "w"))
