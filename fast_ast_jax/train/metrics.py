"""Classification metrics (accuracy, mAP) and the metric writer (stdout, TensorBoard, jsonl)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def accuracy(*, logits: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy: argmax of logits (N, C) against argmax of targets (N, C)."""
    return float(np.mean(np.argmax(logits, -1) == np.argmax(targets, -1)))


def average_precision(*, scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class as sklearn.metrics.average_precision_score defines it.

    AP = sum over distinct score thresholds (highest first) of (R_k - R_{k-1}) * P_k:
    tied scores form one threshold, so tied clips enter the precision-recall curve
    together and their order in the input does not matter (saturated sigmoid scores of
    windowed predictions tie often).

    Args:
        scores: (N,) higher = more likely positive.
        positives: (N,) bool, at least one True.
    """
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], positives[order].astype(np.float64)
    # The last index of each run of equal scores closes one threshold.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float((recall_gain * precision).sum())


def mean_average_precision(*, logits: np.ndarray, targets: np.ndarray) -> float:
    """mAP over classes that have both positives and negatives (NaN if none has).

    logits (N, C) scores; targets (N, C) multi-hot (> 0.5 is positive).
    """
    pos = targets > 0.5
    aps = [average_precision(scores=logits[:, c], positives=pos[:, c])
           for c in range(pos.shape[1]) if 0 < pos[:, c].sum() < len(pos)]
    return float(np.mean(aps)) if aps else float("nan")


class MetricWriter:
    """Writes scalars to stdout, TensorBoard (tensorboardX) and `metrics.jsonl` in workdir.

    Only process 0 writes (other hosts get a no-op writer).
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if enabled:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir))
            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")

    def write(self, step: int, scalars: dict[str, float], *, echo=print) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        if echo:
            echo(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
