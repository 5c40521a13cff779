"""train/metrics.py against scikit-learn (the definition of AP the literature reports)."""
from __future__ import annotations

import numpy as np
import pytest

from fast_ast_jax.train import metrics

metrics_sk = pytest.importorskip("sklearn.metrics")


def test_average_precision_with_ties_matches_sklearn():
    # Ties at a threshold enter the curve together: a tied positive/negative pair counts
    # as precision 1/2, whatever its order in the input.
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    for positives in ([True, False, True, False], [True, True, False, False]):
        positives = np.array(positives)
        expected = metrics_sk.average_precision_score(positives, scores)
        assert metrics.average_precision(scores=scores, positives=positives) == (
            pytest.approx(expected))
    # By hand: thresholds 0.9 (P=1, R=1/2), 0.5 (P=2/3, R=1) -> 1/2 + 1/2 * 2/3.
    assert metrics.average_precision(scores=scores, positives=np.array(
        [True, False, True, False])) == pytest.approx(0.5 + 0.5 * 2 / 3)

    # Saturated sigmoid scores: few distinct values, many ties, both input orders.
    rng = np.random.default_rng(0)
    logits = np.round(rng.standard_normal((200, 6)), 0) * 20  # ~5 distinct values
    targets = (rng.random((200, 6)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # a class without positives is skipped
    expected = np.mean([metrics_sk.average_precision_score(targets[:, c], logits[:, c])
                        for c in range(5)])
    assert metrics.mean_average_precision(logits=logits, targets=targets) == pytest.approx(
        expected, rel=1e-12)
    flipped = metrics.mean_average_precision(logits=logits[::-1], targets=targets[::-1])
    assert flipped == pytest.approx(expected, rel=1e-12)


def test_metrics_match_sklearn_without_ties():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, 5))
    targets = (rng.random((40, 5)) < 0.3).astype(np.float32)
    targets[:, 4] = 0
    expected = np.mean([metrics_sk.average_precision_score(targets[:, c], logits[:, c])
                        for c in range(4)])
    assert metrics.mean_average_precision(logits=logits, targets=targets) == pytest.approx(
        expected)
    onehot = np.eye(5)[rng.integers(0, 5, 40)]
    assert metrics.accuracy(logits=logits, targets=onehot) == pytest.approx(
        np.mean(logits.argmax(-1) == onehot.argmax(-1)))
