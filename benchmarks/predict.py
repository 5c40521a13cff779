"""Throughput of `python -m fast_ast_jax.predict` on many files: clips/s and audio-s/s.

    python benchmarks/predict.py [--before /path/to/older/checkout] [--checkpoint WORKDIR]
        [--files 100] [--seconds 10] [--batch_size 8]

Writes `--files` generated clips of `--seconds` s (tones and noise, 16 kHz WAV), then times
the predict command of this checkout (and of `--before`, another checkout of the
repository, e.g. main before batched inference) as a user runs it: a fresh process over all
files, and one over a single file (start-up, checkpoint loading and compilation), so that
the steady rate excludes start-up. Without `--checkpoint`, a 2-step configs/demo.py run
(AST-tiny, 4 blocks, 128 frames; the weights do not matter for speed) is trained first.

Prints the machine load (`uptime`) with the table: timings on a loaded machine are not
results.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fast_ast_jax.bench import machine_load  # noqa: E402


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


def time_predict(repo: Path, files: list[str], *, checkpoint: str, batch_size: int) -> float:
    """Wall seconds of one predict process of checkout `repo` over `files`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fast_ast_jax.predict", *files, "--checkpoint",
                    checkpoint, "--batch_size", str(batch_size)], cwd=repo, check=True,
                   env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout to compare with (e.g. main)")
    parser.add_argument("--checkpoint", help="training workdir (default: a 2-step demo run)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args(argv)
    before, _ = machine_load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_clips(tmp / "clips", count=args.files, seconds=args.seconds)
        checkpoint = args.checkpoint
        if checkpoint is None:
            train_demo(tmp / "demo")
            checkpoint = str(tmp / "demo")
        versions = ([("before", Path(args.before))] if args.before else []) + [("after", ROOT)]
        rows = []
        for name, repo in versions:
            one = time_predict(repo, files[:1], checkpoint=checkpoint,
                               batch_size=args.batch_size)
            every = time_predict(repo, files, checkpoint=checkpoint,
                                 batch_size=args.batch_size)
            steady = max(every - one, 1e-9)
            rows.append((name, every, len(files) / every, len(files) * args.seconds / every,
                         (len(files) - 1) / steady, (len(files) - 1) * args.seconds / steady))
    print(f"machine: {os.cpu_count()} CPUs; uptime before: {before}; after: {machine_load()[0]}")
    print(f"{args.files} files x {args.seconds:g} s, --batch_size {args.batch_size}, "
          f"checkpoint {checkpoint if args.checkpoint else 'demo (2 steps)'}")
    print("| version | wall s | clips/s | audio-s/s | steady clips/s | steady audio-s/s |")
    print("|---|---|---|---|---|---|")
    for name, wall, cps, aps, scps, saps in rows:
        print(f"| {name} | {wall:.1f} | {cps:.2f} | {aps:.1f} | {scps:.2f} | {saps:.1f} |")


if __name__ == "__main__":
    main()
