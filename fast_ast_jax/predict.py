"""Top-k labels for audio files with a trained checkpoint.

    python -m fast_ast_jax.predict clip.wav long.mp3 --checkpoint WORKDIR [--top_k 5]
        [--hop_frames N] [--per_window] [--batch_size 8]

Files of any format, sample rate and channel count are decoded, downmixed and resampled by
the checkpoint's own front-end. A clip up to the trained length (target_frames) is one
model input, padded as in training; a longer one is scored by sliding windows of
target_frames every `--hop_frames` frames (default half a window), batched, and aggregated
(fast_ast_jax.windows): softmax of the mean window logits (single-label) or the max over
windows of the sigmoids (multi-label). `--per_window` also prints each window's top labels
with its start and end time.
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator, Sequence

import jax
import numpy as np


def _scores(files: Sequence[str | os.PathLike], *, checkpoint, hop_frames: int | None,
            batch_size: int):
    """(labels, iterator of ClipScores per file)."""
    from fast_ast_jax.audio.io import load_audio
    from fast_ast_jax.train.evaluation import load_checkpoint
    from fast_ast_jax.windows import windowed_scores

    restored = load_checkpoint(checkpoint)
    fe = restored.frontend
    forward = jax.jit(lambda p, x: restored.model.apply({"params": p}, x, train=False))
    waves = (load_audio(f, sample_rate=fe.sample_rate) for f in files)  # one file at a time
    clips = windowed_scores(waves, apply=lambda x: forward(restored.params, x), frontend=fe,
                            multi_label=restored.loss == "sigmoid", hop_frames=hop_frames,
                            batch_size=batch_size)
    return restored.labels, clips


def _top(labels: list[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    return [(labels[i], float(scores[i]))
            for i in np.argsort(-scores, kind="stable")[:min(k, len(labels))]]


def predict(files: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike,
            top_k: int = 5, batch_size: int = 8,
            hop_frames: int | None = None) -> list[list[tuple[str, float]]]:
    """For each file, its `top_k` (label, score) pairs, best first (windows aggregated)."""
    labels, clips = _scores(files, checkpoint=checkpoint, hop_frames=hop_frames,
                            batch_size=batch_size)
    return [_top(labels, c.scores, top_k) for c in clips]


def predict_windows(files: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike,
                    top_k: int = 5, batch_size: int = 8, hop_frames: int | None = None
                    ) -> Iterator[tuple[list, list[tuple[float, float, list]]]]:
    """Per file: (aggregated top-k, [(start_s, end_s, window top-k), ...]), lazily."""
    labels, clips = _scores(files, checkpoint=checkpoint, hop_frames=hop_frames,
                            batch_size=batch_size)
    for c in clips:
        yield (_top(labels, c.scores, top_k),
               [(t0, t1, _top(labels, p, top_k)) for t0, t1, p in c.windows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="audio files")
    parser.add_argument("--checkpoint", required=True, help="training workdir or checkpoints/")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=8, help="windows per model call")
    parser.add_argument("--hop_frames", type=int, default=None,
                        help="frames between windows of long clips (default: half a window)")
    parser.add_argument("--per_window", action="store_true",
                        help="also print every window's top labels with its times")
    args = parser.parse_args(argv)
    fmt = lambda top: ", ".join(f"{label} {score:.3f}" for label, score in top)
    results = predict_windows(args.files, checkpoint=args.checkpoint, top_k=args.top_k,
                              batch_size=args.batch_size, hop_frames=args.hop_frames)
    for f, (top, windows) in zip(args.files, results):
        print(f"{f}: {fmt(top)}")
        if args.per_window:
            for t0, t1, wtop in windows:
                print(f"  {t0:8.2f}-{t1:8.2f} s: {fmt(wtop)}")


if __name__ == "__main__":
    main()
