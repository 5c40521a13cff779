"""Audio loading: formats, resampling, downmix, array input and every error case."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax.audio import AudioError, FrontEnd, features_from_file, load_audio
from fast_ast_jax.audio import prepare_waveform

SR = 16000
# ../shared/data next to the repo root (parents[2]); from a git worktree one level deeper,
# the nearest ancestor holding shared/data.
_DATA = next((p / "shared" / "data" for p in Path(__file__).resolve().parents[2:]
              if (p / "shared" / "data").is_dir()),
             Path(__file__).resolve().parents[2] / "shared" / "data")
FSDD = _DATA / "fsdd" / "recordings"


def _tone(freq: float, *, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(
        np.float32)


def _peak_hz(wave: np.ndarray, *, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spec) * sr / wave.size)


def _names(path: Path) -> str:
    return re.escape(str(path))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampled_tone_keeps_its_frequency(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    sf.write(path, _tone(1000.0, sr=sr), sr, subtype="PCM_16")
    wave = load_audio(path, sample_rate=SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == SR  # 1 s at any rate -> 16000 samples
    assert abs(_peak_hz(wave, sr=SR) - 1000.0) <= 1.0
    # High-quality resampling keeps the amplitude (no aliasing / droop at 1 kHz).
    mid = wave[SR // 4: 3 * SR // 4]
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


@pytest.mark.parametrize("channels", range(1, 9))
def test_downmix_is_channel_mean(tmp_path, channels):
    rng = np.random.default_rng(channels)
    data = rng.uniform(-0.5, 0.5, size=(4000, channels)).astype(np.float32)
    path = tmp_path / f"multi_{channels}.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    wave = load_audio(path, sample_rate=SR)
    np.testing.assert_allclose(wave, data.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(prepare_waveform(data, sr=SR, sample_rate=SR),
                               data.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("subtype,step", [("PCM_16", 2.0 ** -15), ("PCM_32", 2.0 ** -31),
                                          ("FLOAT", 0.0), ("PCM_U8", 2.0 ** -7)])
def test_sample_formats_become_float32(tmp_path, subtype, step):
    ramp = np.linspace(-1.0, 1.0 - 2.0 ** -7, 2048)
    path = tmp_path / f"ramp_{subtype}.wav"
    sf.write(path, ramp, SR, subtype=subtype)
    wave = load_audio(path, sample_rate=SR)
    assert wave.dtype == np.float32 and wave.shape == ramp.shape
    assert wave.min() >= -1.0 and wave.max() <= 1.0
    np.testing.assert_allclose(wave, ramp, atol=step + 1e-7)
    assert wave[0] == -1.0  # full-scale negative integer maps to exactly -1


def test_integer_arrays_scale_by_bit_depth():
    pcm16 = np.array([-32768, 0, 16384, 32767], np.int16)
    np.testing.assert_allclose(prepare_waveform(pcm16, sr=SR, sample_rate=SR),
                               [-1.0, 0.0, 0.5, 32767 / 32768])
    pcm_u8 = np.array([0, 128, 192, 255], np.uint8)  # offset binary
    np.testing.assert_allclose(prepare_waveform(pcm_u8, sr=SR, sample_rate=SR),
                               [-1.0, 0.0, 0.5, 127 / 128])
    pcm32 = np.array([-(2 ** 31), 2 ** 30], np.int32)
    np.testing.assert_allclose(prepare_waveform(pcm32, sr=SR, sample_rate=SR), [-1.0, 0.5])
    # TFDS stores 16-bit audio as int64: the bit depth must be given.
    tfds_like = pcm16.astype(np.int64)
    with pytest.raises(AudioError, match="bit_depth"):
        prepare_waveform(tfds_like, sr=SR, sample_rate=SR, name="spoken_digit[3]")
    np.testing.assert_allclose(prepare_waveform(tfds_like, sr=SR, sample_rate=SR, bit_depth=16),
                               prepare_waveform(pcm16, sr=SR, sample_rate=SR))
    with pytest.raises(AudioError, match=r"spoken_digit\[3\].*outside 16-bit"):
        prepare_waveform(tfds_like * 4, sr=SR, sample_rate=SR, bit_depth=16,
                         name="spoken_digit[3]")


def test_array_resample_and_layout():
    stereo = np.stack([_tone(1000.0, sr=8000), _tone(1000.0, sr=8000)], axis=1)
    wave = prepare_waveform(stereo, sr=8000, sample_rate=SR)
    assert wave.shape == (SR,) and wave.dtype == np.float32 and wave.flags.c_contiguous
    assert abs(_peak_hz(wave, sr=SR) - 1000.0) <= 1.0
    with pytest.raises(AudioError, match=r"clip_7: shape \(2, 8000\).*transpose"):
        prepare_waveform(stereo.T, sr=8000, sample_rate=SR, name="clip_7")
    for bad in (np.zeros((2, 3, 4), np.float32), np.array(["a", "b"])):
        with pytest.raises(AudioError, match="clip_7"):
            prepare_waveform(bad, sr=SR, sample_rate=SR, name="clip_7")
    with pytest.raises(AudioError, match="clip_7: sample rates"):
        prepare_waveform(stereo, sr=0, sample_rate=SR, name="clip_7")


@pytest.mark.parametrize("fmt,subtype,atol", [("FLAC", "PCM_16", 2.0 ** -15),
                                              ("OGG", "VORBIS", None), ("MP3", None, None)])
def test_compressed_round_trips(tmp_path, fmt, subtype, atol):
    path = tmp_path / f"clip.{fmt.lower()}"
    data = np.stack([_tone(1000.0, sr=SR), _tone(1000.0, sr=SR, amp=0.3)], axis=1)
    if fmt not in sf.available_formats():
        pytest.skip(reason=f"this libsndfile cannot write {fmt}")
    sf.write(path, data, SR, format=fmt, subtype=subtype)
    wave = load_audio(path, sample_rate=SR)
    assert wave.dtype == np.float32 and wave.ndim == 1
    if atol is not None:  # lossless
        np.testing.assert_allclose(wave, data.mean(axis=1), atol=atol)
    else:  # lossy codecs: length within a codec frame, same tone and level
        assert abs(wave.shape[0] - SR) <= 2048
        assert abs(_peak_hz(wave[:SR // 2], sr=SR) - 1000.0) <= 2.0
        mid = wave[SR // 4: SR // 2]
        assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.05)


def test_silent_audio_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(8000), 8000, subtype="PCM_16")
    wave = load_audio(path, sample_rate=SR)
    assert wave.shape == (SR,) and not wave.any()
    assert np.isfinite(features_from_file(path, frontend=FrontEnd(target_frames=100))).all()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match=_names(path) + ": no such audio file; check"):
        load_audio(path, sample_rate=SR)


def test_directory(tmp_path):
    with pytest.raises(AudioError, match=_names(tmp_path) + ": is a directory"):
        load_audio(tmp_path, sample_rate=SR)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError, match=_names(path) + r": file is empty \(0 bytes\)"):
        load_audio(path, sample_rate=SR)


@pytest.mark.parametrize("name,content", [
    ("notes.wav", b"these are my notes, not audio\n" * 20),
    ("random.flac", bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8))),
    ("truncated.ogg", b"OggS\x00\x02" + b"\x00" * 40),
])
def test_undecodable_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=_names(path) + ": cannot decode audio.*re-encode"):
        load_audio(path, sample_rate=SR)


def test_zero_sample_audio(tmp_path):
    path = tmp_path / "nothing.wav"
    sf.write(path, np.zeros((0, 2)), SR, subtype="PCM_16")
    assert path.stat().st_size > 0  # a valid header with no frames
    with pytest.raises(AudioError, match=_names(path) + ": audio has 0 samples"):
        load_audio(path, sample_rate=SR)
    with pytest.raises(AudioError, match="0 samples"):
        prepare_waveform(np.zeros(0, np.float32), sr=SR, sample_rate=SR)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    data = _tone(440.0, sr=SR, seconds=0.1)
    data[100] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, data, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=_names(path) + ": 1 of 1600 samples are NaN or Inf"):
        load_audio(path, sample_rate=SR)


def test_error_is_value_error_one_line(tmp_path):
    path = tmp_path / "nope.flac"
    with pytest.raises(ValueError) as info:
        load_audio(path, sample_rate=SR)
    assert "\n" not in str(info.value)


def test_fsdd_real_recording():
    path = FSDD / "7_jackson_32.wav"
    if not path.exists():
        pytest.skip(reason=f"FSDD recording {path} not found (../shared/data next to the repo)")
    info = sf.info(path)
    assert (info.samplerate, info.channels) == (8000, 1)
    wave = load_audio(path, sample_rate=SR)
    assert wave.dtype == np.float32 and wave.shape == (2 * info.frames,)
    assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1.0
    feats = features_from_file(path, frontend=FrontEnd(target_frames=128))
    assert feats.shape == (128, 128) and np.isfinite(feats).all()
