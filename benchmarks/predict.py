"""Throughput of predict over many files, features on the host vs on the device, one run.

    python benchmarks/predict.py [--checkpoint WORKDIR] [--files 100] [--seconds 10]
        [--batch_size 8] [--rounds 5] [--workers 4]

Writes `--files` generated clips of `--seconds` s (tones and noise, 16 kHz WAV), loads the
checkpoint once and runs `predict_files` (what `python -m fast_ast_jax.predict` runs) over
all of them with the features made on the host (the clip's NumPy fbank cut into windows)
and on the device (waveform windows; fbank, normalisation and model in one compiled
program), interleaved over `--rounds` rounds after one compiling pass each, so that both
see the same machine. Steady rates exclude start-up, checkpoint loading and compilation.
Without `--checkpoint`, a 2-step configs/demo.py run (AST-tiny, 4 blocks, 128 frames; the
weights do not matter for speed) is trained first.

Prints the machine load (`uptime`) with the table, and the MACs per window of the model and
of the on-device front-end: timings on a loaded machine are not results.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fast_ast_jax import bench, checkpoints  # noqa: E402
from fast_ast_jax.audio.fbank import num_frames  # noqa: E402
from fast_ast_jax.audio.fbank_jax import log_mel_macs  # noqa: E402
from fast_ast_jax.models import AST  # noqa: E402
from fast_ast_jax.inference import predict_files  # noqa: E402
from fast_ast_jax.windows import scorer, window_starts  # noqa: E402

MODES = {"host features": False, "device features": True}


def write_clips(directory: Path, *, count: int, seconds: float, sr: int = 16000) -> list[str]:
    """`count` clips of tones (a different pitch each) plus noise."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    files = []
    for i in range(count):
        wave = 0.2 * np.sin(2 * np.pi * (150 + 37 * i) * t) + 0.05 * rng.normal(size=len(t))
        path = directory / f"clip_{i:04d}.wav"
        sf.write(path, wave.astype(np.float32), sr)
        files.append(str(path))
    return files


def train_demo(workdir: Path) -> None:
    subprocess.run([sys.executable, "train.py", "--config", "configs/demo.py", "--workdir",
                    str(workdir), "--config.num_steps=2", "--config.data.train.num_examples=64",
                    "--config.data.eval.num_examples=8"], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)


def time_predict(files: list[str], **kwargs) -> float:
    """Wall seconds of one `predict_files` pass over `files` (every file must succeed)."""
    start = time.perf_counter()
    for r in predict_files(files, **kwargs):
        if r.error is not None:
            raise SystemExit(f"{r.file}: {r.error}")
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="training workdir (default: a 2-step demo run)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="decoding threads")
    args = parser.parse_args(argv)
    before, _ = bench.machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_clips(tmp / "clips", count=args.files, seconds=args.seconds)
        checkpoint = args.checkpoint
        if checkpoint is None:
            train_demo(tmp / "demo")
            checkpoint = str(tmp / "demo")
        bundle = checkpoints.load(checkpoint)
        common = dict(checkpoint=bundle, batch_size=args.batch_size, workers=args.workers)
        for on_device in MODES.values():  # compile each mode's program outside the timing
            time_predict(files[:1], on_device=on_device, **common)
        seconds = {name: [] for name in MODES}
        for r in range(args.rounds):
            order = list(MODES.items())
            for name, on_device in order if r % 2 == 0 else order[::-1]:
                seconds[name].append(time_predict(files, on_device=on_device, **common))
    fe = scorer(bundle, on_device=True).frontend
    windows = len(window_starts(int(args.seconds * fe.sample_rate), frontend=fe,
                                hop_frames=max(1, fe.target_frames // 2)))
    frames = min(fe.target_frames, num_frames(int(args.seconds * fe.sample_rate),
                                              window_size=fe.window_size,
                                              hop_size=fe.hop_size))
    model_macs = (f"{bench.ast_macs(bundle.model, frames=fe.target_frames).total:.3e}"
                  if isinstance(bundle.model, AST) else "n/a (not an AST)")
    print(f"machine: {os.cpu_count()} CPUs, JAX backend {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}); uptime before: {before}; after: "
          f"{bench.machine_load()[0]}")
    print(f"{args.files} files x {args.seconds:g} s ({windows} windows of {fe.target_frames} "
          f"frames each), --batch_size {args.batch_size}, {args.workers} decoding threads, "
          f"{args.rounds} interleaved rounds, checkpoint "
          f"{checkpoint if args.checkpoint else 'demo (2 steps)'}")
    print(f"MACs per window: model {model_macs}; on-device front-end "
          f"{log_mel_macs(frames, frontend=fe):.3e}")
    print("| features | median s per pass | clips/s | audio-s/s |")
    print("|---|---|---|---|")
    rate = {}
    for name, times in seconds.items():
        median = statistics.median(times)
        rate[name] = args.files * args.seconds / median
        print(f"| {name} | {median:.2f} | {args.files / median:.2f} | {rate[name]:.1f} |")
    print(f"device / host audio-s/s: "
          f"{rate['device features'] / rate['host features']:.2f}x")


if __name__ == "__main__":
    main()
