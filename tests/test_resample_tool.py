"""`python -m fast_ast_jax.data.resample`: a folder dataset converted once to 16 kHz mono FLAC
loads as the original does (up to 16-bit quantisation), keeps its CSV columns, lists and
leaves out bad clips (or fails naming them), resumes, and rejects ambiguous outputs."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax.audio.io import AudioError, load_audio
from fast_ast_jax.data import FolderSource
from fast_ast_jax.data.resample import convert_folder, main

RATE = 16000
QUANTUM = 2.0 ** -15  # one 16-bit PCM step


def dataset(root):
    """Clips at 44.1 kHz stereo (WAV), 22.05 kHz (FLAC, in a subfolder), 16 kHz, a corrupt
    and an empty file; meta.csv with a split column."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)

    def tone(rate, seconds=0.5, channels=1):
        t = np.arange(int(rate * seconds)) / rate
        wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
        return np.stack([wave, 0.5 * wave], 1) if channels == 2 else wave

    sf.write(root / "a.wav", tone(44100, channels=2), 44100, subtype="PCM_16")
    sf.write(root / "sub" / "b.flac", tone(22050), 22050, subtype="PCM_16")
    sf.write(root / "c.wav", tone(RATE), RATE, subtype="PCM_16")
    (root / "corrupt.wav").write_bytes(b"RIFF not really a wav file" * 10)
    (root / "empty.flac").write_bytes(b"")
    rows = [("a.wav", "yes", "train"), ("sub/b.flac", "no", "test"), ("c.wav", "no", "train"),
            ("corrupt.wav", "yes", "train"), ("empty.flac", "no", "test")]
    with open(root / "meta.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "label", "split"), *rows])
    return root / "meta.csv"


def test_converted_clips_load_as_the_originals(tmp_path):
    meta = dataset(tmp_path / "orig")
    result = convert_folder(csv_path=meta, out_dir=tmp_path / "out")
    assert result["converted"] == 3
    assert set(result["bad"]) == {"corrupt.wav", "empty.flac"}
    assert "corrupt.wav" in result["bad"]["corrupt.wav"]
    with open(tmp_path / "out" / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["filename"], r["label"], r["split"]) for r in rows] == [
        ("a.flac", "yes", "train"), ("sub/b.flac", "no", "test"), ("c.flac", "no", "train")]
    with open(tmp_path / "out" / "bad_clips.csv", newline="") as f:
        assert [r["filename"] for r in csv.DictReader(f)] == ["corrupt.wav", "empty.flac"]
    for orig, new in (("a.wav", "a.flac"), ("sub/b.flac", "sub/b.flac"), ("c.wav", "c.flac")):
        info = sf.info(tmp_path / "out" / new)
        assert (info.samplerate, info.channels, info.format) == (RATE, 1, "FLAC")
        want = load_audio(tmp_path / "orig" / orig, sample_rate=RATE)
        got = load_audio(tmp_path / "out" / new, sample_rate=RATE)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2 * QUANTUM, rtol=0)
    # The converted CSV is a FolderSource like the original one (same labels, selection).
    src = FolderSource(csv_path=tmp_path / "out" / "meta.csv", select={"split": "train"})
    assert src.labels == ["no", "yes"] and src.ids == ["a.flac", "c.flac"]


def test_resume_keeps_finished_files_and_overwrite_redoes_them(tmp_path):
    meta = dataset(tmp_path / "orig")
    convert_folder(csv_path=meta, out_dir=tmp_path / "out")
    done = tmp_path / "out" / "c.flac"
    os.utime(done, (1, 1))
    (tmp_path / "out" / "a.flac").unlink()  # as if the first run was killed before it
    result = convert_folder(csv_path=meta, out_dir=tmp_path / "out", workers=1)
    assert result["converted"] == 3 and (tmp_path / "out" / "a.flac").is_file()
    assert done.stat().st_mtime == 1  # kept
    convert_folder(csv_path=meta, out_dir=tmp_path / "out", overwrite=True)
    assert done.stat().st_mtime > 1
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_fail_policy_and_usage_errors_name_the_problem(tmp_path, capsys):
    meta = dataset(tmp_path / "orig")
    with pytest.raises(AudioError, match="corrupt.wav"):
        convert_folder(csv_path=meta, out_dir=tmp_path / "out", on_bad_clip="fail")
    assert main(["--csv", str(meta), "--out", str(tmp_path / "orig")]) == 2
    assert "is the audio directory" in capsys.readouterr().err
    assert main(["--csv", str(meta), "--out", str(tmp_path / "o2"),
                 "--filename_column", "path"]) == 2
    assert "no column 'path'" in capsys.readouterr().err
    with open(meta, "a") as f:
        f.write("sub/b.wav,no,train\n")  # sub/b.flac and sub/b.wav -> one output
    with pytest.raises(ValueError, match="would both become 'sub/b.flac'"):
        convert_folder(csv_path=meta, out_dir=tmp_path / "o3")


def test_overshoot_is_clipped_and_counted(tmp_path, capsys):
    root = tmp_path / "orig"
    root.mkdir()
    square = np.sign(np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100))  # full scale
    sf.write(root / "sq.wav", square, 44100, subtype="FLOAT")
    (root / "meta.csv").write_text("filename,label\nsq.wav,x\n")
    assert np.abs(load_audio(root / "sq.wav", sample_rate=RATE)).max() > 1.0
    assert main(["--csv", str(root / "meta.csv"), "--out", str(tmp_path / "out")]) == 0
    assert "1 clip(s) had samples outside [-1, 1]" in capsys.readouterr().out
    assert np.abs(load_audio(tmp_path / "out" / "sq.flac", sample_rate=RATE)).max() <= 1.0
