"""Top-k labels for audio files with a trained checkpoint.

    python -m fast_ast_jax.predict clip.wav other.mp3 --checkpoint WORKDIR [--top_k 5]

Files of any format, sample rate and channel count are decoded, downmixed and resampled by
the checkpoint's own front-end; clips longer than its target_frames are cropped (as in
training). Scores are softmax probabilities (single-label) or sigmoids (multi-label).
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import jax
import numpy as np


def predict(files: Sequence[str | os.PathLike], *, checkpoint: str | os.PathLike,
            top_k: int = 5, batch_size: int = 8) -> list[list[tuple[str, float]]]:
    """For each file, its `top_k` (label, score) pairs, best first."""
    from fast_ast_jax.audio.features import features
    from fast_ast_jax.audio.io import load_audio
    from fast_ast_jax.train.evaluation import load_checkpoint

    restored = load_checkpoint(checkpoint)
    fe = restored.frontend
    apply = jax.jit(lambda p, x: restored.model.apply({"params": p}, x, train=False))
    scores = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = np.stack([features(load_audio(f, sample_rate=fe.sample_rate), frontend=fe)
                      for f in chunk])
        logits = apply(restored.params, x)
        probs = (jax.nn.sigmoid(logits) if restored.loss == "sigmoid"
                 else jax.nn.softmax(logits, axis=-1))
        scores.extend(np.asarray(probs))
    k = min(top_k, len(restored.labels))
    return [[(restored.labels[i], float(s[i])) for i in np.argsort(-s, kind="stable")[:k]]
            for s in scores]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="audio files")
    parser.add_argument("--checkpoint", required=True, help="training workdir or checkpoints/")
    parser.add_argument("--top_k", type=int, default=5)
    args = parser.parse_args(argv)
    for f, top in zip(args.files, predict(args.files, checkpoint=args.checkpoint,
                                          top_k=args.top_k)):
        print(f"{f}: " + ", ".join(f"{label} {score:.3f}" for label, score in top))


if __name__ == "__main__":
    main()
