"""Classification and distillation losses.

All losses take keyword-only arguments (so logits and labels cannot be swapped), return a
scalar mean over the (optionally weighted) batch, and compute in float32.

Distillation follows CMKD (arXiv 2203.06760; docs/REFERENCES.md §7):
    loss = lam * task_loss(student, labels) + (1 - lam) * kd_loss(student, teacher_probs)
- the teacher enters as *predictions* p_t taken at temperature tau on the teacher logits
  only (data.clips.teacher_probs: softmax(teacher / tau) single-label, sigmoid(teacher /
  tau) multi-label), so that mixup mixes predictions with the labels' weight (see
  data/pipeline.py); the student is not scaled and the loss is not multiplied by tau**2;
  `lam` weights the ground-truth term;
- single-label: KL(p_t || softmax(student)), summed over classes;
- multi-label: binary cross-entropy of sigmoid(student) against p_t, averaged over classes
  like BCEWithLogitsLoss. It differs from the per-class Bernoulli KL only by the teacher's
  entropy, a constant, so the gradients are identical.
Teacher predictions never receive gradients (stop_gradient).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
    """(B,) -> scalar; weights (B,) of 0/1 (padding) or soft example weights."""
    if weights is None:
        return per_example.mean()
    weights = weights.astype(jnp.float32)
    return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-8)


def _as_targets(labels: jax.Array, num_classes: int) -> jax.Array:
    """Integer class ids (B,) -> one-hot (B, C); soft / multi-hot (B, C) pass through."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels.astype(jnp.float32)


def softmax_xent(*, logits: jax.Array, labels: jax.Array,
                 weights: jax.Array | None = None) -> jax.Array:
    """Softmax cross-entropy.

    Args:
        logits: (B, C).
        labels: (B,) integer class ids, or (B, C) target distributions (e.g. mixup).
        weights: optional (B,) per-example weights (0 for padding examples).
    """
    logits = logits.astype(jnp.float32)
    targets = _as_targets(labels, logits.shape[-1])
    per_example = -(targets * jax.nn.log_softmax(logits, axis=-1)).sum(axis=-1)
    return _weighted_mean(per_example, weights)


def sigmoid_xent(*, logits: jax.Array, labels: jax.Array,
                 weights: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy with logits, averaged over classes (BCEWithLogitsLoss).

    Args:
        logits: (B, C).
        labels: (B, C) multi-hot or soft targets in [0, 1], or (B,) class ids.
        weights: optional (B,) per-example weights.
    """
    logits = logits.astype(jnp.float32)
    targets = _as_targets(labels, logits.shape[-1])
    per_class = (jax.nn.softplus(logits) - targets * logits)  # = -[t log s + (1-t) log(1-s)]
    return _weighted_mean(per_class.mean(axis=-1), weights)


def kd_loss(*, logits: jax.Array, teacher_probs: jax.Array, multilabel: bool,
            weights: jax.Array | None = None) -> jax.Array:
    """Distillation term against a frozen teacher's predictions (possibly mixed by mixup).

    Args:
        logits: (B, C) student logits.
        teacher_probs: (B, C) teacher predictions at the distillation temperature
            (data.clips.teacher_probs): rows of a distribution (single-label) or
            per-class probabilities in [0, 1] (multi-label). No gradient flows into them.
        multilabel: sigmoid/BCE (True) or softmax/KL (False).
        weights: optional (B,) per-example weights.
    """
    if logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {logits.shape} and teacher predictions "
                         f"{teacher_probs.shape} differ in shape")
    p = jax.lax.stop_gradient(teacher_probs.astype(jnp.float32))
    logits = logits.astype(jnp.float32)
    if multilabel:
        return sigmoid_xent(logits=logits, labels=p, weights=weights)
    # xlogy: classes with p = 0 (e.g. outside a top-k teacher file) contribute 0.
    per_example = (jax.scipy.special.xlogy(p, p)
                   - p * jax.nn.log_softmax(logits, axis=-1)).sum(axis=-1)
    return _weighted_mean(per_example, weights)


def task_loss(*, logits: jax.Array, labels: jax.Array, multilabel: bool,
              weights: jax.Array | None = None) -> jax.Array:
    """CE for single-label, BCE for multi-label tasks."""
    fn = sigmoid_xent if multilabel else softmax_xent
    return fn(logits=logits, labels=labels, weights=weights)


def distill_loss(*, logits: jax.Array, labels: jax.Array, teacher_probs: jax.Array,
                 lam: float, multilabel: bool,
                 weights: jax.Array | None = None) -> jax.Array:
    """CMKD: lam * task_loss(student, labels) + (1 - lam) * kd_loss(student, teacher_probs).

    lam = 1 is plain supervised training; lam = 0 is pure distillation. The temperature
    is in teacher_probs already (data.clips.teacher_probs).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"distillation weight lam={lam} must be in [0, 1]")
    task = task_loss(logits=logits, labels=labels, multilabel=multilabel, weights=weights)
    kd = kd_loss(logits=logits, teacher_probs=teacher_probs, multilabel=multilabel,
                 weights=weights)
    return lam * task + (1.0 - lam) * kd
