"""Losses against hand-written NumPy formulas (docs/REFERENCES.md §7: no reference code is public)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.data.clips import teacher_probs
from fast_ast_jax.train import losses

RNG = np.random.default_rng(0)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_bce(z, t):
    s = np_sigmoid(z)
    return -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean(axis=-1)


def test_softmax_xent_hand_computed():
    # Two classes, logits (0, log 3): p = (1/4, 3/4); label 1 -> -log(3/4).
    logits = jnp.array([[0.0, np.log(3.0)]])
    assert float(losses.softmax_xent(logits=logits, labels=jnp.array([1]))) == pytest.approx(
        -np.log(0.75), abs=1e-6)
    # Soft targets (mixup) 0.5/0.5 -> -(0.5 log 1/4 + 0.5 log 3/4).
    soft = jnp.array([[0.5, 0.5]])
    assert float(losses.softmax_xent(logits=logits, labels=soft)) == pytest.approx(
        -(0.5 * np.log(0.25) + 0.5 * np.log(0.75)), abs=1e-6)


def test_sigmoid_xent_hand_computed_and_stable():
    # logit 0 -> sigmoid 0.5 -> BCE = log 2 whatever the target.
    assert float(losses.sigmoid_xent(logits=jnp.zeros((1, 3)), labels=jnp.array(
        [[1.0, 0.0, 1.0]]))) == pytest.approx(np.log(2.0), abs=1e-6)
    # Huge logits stay finite (softplus form, no log(0)).
    big = losses.sigmoid_xent(logits=jnp.array([[200.0, -200.0]]),
                              labels=jnp.array([[0.0, 1.0]]))
    assert np.isfinite(float(big)) and float(big) == pytest.approx(200.0, rel=1e-6)


def test_weights_exclude_padding_examples():
    logits = jnp.asarray(RNG.normal(size=(4, 5)), jnp.float32)
    labels = jnp.array([0, 1, 2, 3])
    w = jnp.array([1.0, 1.0, 0.0, 0.0])
    full = losses.softmax_xent(logits=logits[:2], labels=labels[:2])
    masked = losses.softmax_xent(logits=logits, labels=labels, weights=w)
    assert float(masked) == pytest.approx(float(full), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_distill_single_label_matches_numpy(tau, lam):
    zs = RNG.normal(size=(6, 10)).astype(np.float32)
    zt = (3 * RNG.normal(size=(6, 10))).astype(np.float32)
    y = RNG.integers(0, 10, size=6)
    ce = -np_log_softmax(zs)[np.arange(6), y]
    pt = np.exp(np_log_softmax(zt / tau))
    np.testing.assert_allclose(teacher_probs(zt, tau=tau, multilabel=False), pt, rtol=1e-5)
    kl = (pt * (np_log_softmax(zt / tau) - np_log_softmax(zs))).sum(-1)
    want = (lam * ce + (1 - lam) * kl).mean()
    got = losses.distill_loss(logits=jnp.asarray(zs), labels=jnp.asarray(y),
                              teacher_probs=jnp.asarray(pt), lam=lam, multilabel=False)
    assert float(got) == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("lam", [0.0, 0.1, 1.0])
def test_distill_multi_label_matches_numpy(tau, lam):
    zs = RNG.normal(size=(5, 7)).astype(np.float32)
    zt = (2 * RNG.normal(size=(5, 7))).astype(np.float32)
    y = (RNG.random(size=(5, 7)) < 0.3).astype(np.float32)
    pt = np_sigmoid(zt / tau)
    np.testing.assert_allclose(teacher_probs(zt, tau=tau, multilabel=True), pt, rtol=1e-5)
    want = (lam * np_bce(zs, y) + (1 - lam) * np_bce(zs, pt)).mean()
    got = losses.distill_loss(logits=jnp.asarray(zs), labels=jnp.asarray(y),
                              teacher_probs=jnp.asarray(pt), lam=lam, multilabel=True)
    assert float(got) == pytest.approx(float(want), abs=1e-5)


def test_kd_of_mixed_predictions_with_zero_probabilities():
    # A mixed top-k target: p = 0.3 * (0.5, 0.5, 0, 0) + 0.7 * (0, 0, 0.9, 0.1). Classes
    # with p = 0 contribute nothing (no 0 * log 0 = NaN); KL = sum p (log p - log q).
    p = np.array([[0.15, 0.15, 0.63, 0.07]])
    zs = np.array([[0.5, -1.0, 2.0, 0.0]])
    want = (p * (np.log(p) - np_log_softmax(zs))).sum()
    got = losses.kd_loss(logits=jnp.asarray(zs), teacher_probs=jnp.asarray(p),
                         multilabel=False)
    assert float(got) == pytest.approx(want, abs=1e-5)
    p0 = jnp.array([[0.5, 0.5, 0.0, 0.0]])
    want = (0.5 * (np.log(0.5) - np_log_softmax(zs)[0, :2])).sum()
    assert float(losses.kd_loss(logits=jnp.asarray(zs), teacher_probs=p0,
                                multilabel=False)) == pytest.approx(want, abs=1e-5)


def test_kd_is_zero_when_student_equals_teacher_single_label():
    z = RNG.normal(size=(3, 4)).astype(np.float32)
    p = jnp.asarray(teacher_probs(z, tau=1.0, multilabel=False))
    assert float(losses.kd_loss(logits=jnp.asarray(z), teacher_probs=p,
                                multilabel=False)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_gets_no_gradient_and_student_gradients_are_finite():
    zs = jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32)
    pt = jax.nn.softmax(jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32))
    y = jnp.array([0, 1, 2, 3])
    for multilabel in (False, True):
        labels = jax.nn.one_hot(y, 6) if multilabel else y
        fn = lambda s, t: losses.distill_loss(logits=s, labels=labels, teacher_probs=t,
                                              lam=0.5, multilabel=multilabel)
        gs, gt = jax.grad(fn, argnums=(0, 1))(zs, pt)
        assert np.all(np.isfinite(np.asarray(gs))) and np.abs(np.asarray(gs)).sum() > 0
        np.testing.assert_array_equal(np.asarray(gt), 0.0)


def test_bad_arguments_are_clear_errors():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"config\.distill\.tau=0\.0"):
        teacher_probs(np.zeros((2, 3)), tau=0.0, multilabel=False)
    with pytest.raises(ValueError, match="lam=1.5"):
        losses.distill_loss(logits=z, labels=jnp.array([0, 1]), teacher_probs=z, lam=1.5,
                            multilabel=False)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        losses.kd_loss(logits=z, teacher_probs=jnp.zeros((2, 4)), multilabel=True)
