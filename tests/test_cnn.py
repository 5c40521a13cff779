"""CNN teacher: shapes, both poolings, gradients, clear errors."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

from fast_ast_jax.models.cnn import create_cnn


def _init(model, x):
    return jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]


@pytest.mark.parametrize("pooling,frames", [("attention", 37), ("mean", 48)])
def test_shapes_and_finite_under_jit(pooling, frames):
    model = create_cnn("tiny", num_classes=7, pooling=pooling, num_mel_bins=32)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, frames, 32))
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(_init(model, x), x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)


def test_train_mode_dropout_and_finite_gradients():
    model = create_cnn("tiny", num_classes=3, num_mel_bins=32, dropout=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32))
    params = _init(model, x)

    @functools.partial(jax.jit, static_argnames="train")
    def run(p, key, train):
        return model.apply({"params": p}, x, train=train, rngs={"dropout": key})

    def loss(p):
        return model.apply({"params": p}, x, train=True,
                           rngs={"dropout": jax.random.PRNGKey(4)}).sum()

    k2, k3 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)
    assert not jnp.allclose(run(params, k2, True), run(params, k3, True))
    chex.assert_trees_all_equal(run(params, k2, False), run(params, k3, False))
    chex.assert_tree_all_finite(jax.jit(jax.grad(loss))(params))


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown CNNTeacher field.*'widht'"):
        create_cnn("tiny", num_classes=2, widht=3)
    model = create_cnn("tiny", num_classes=2)
    with pytest.raises(ValueError, match=r"\(batch, frames, 128\).*\(2, 50, 64\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((2, 50, 64)))
    with pytest.raises(ValueError, match="unknown CNN stages 'huge'"):
        create_cnn("huge", num_classes=2).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 128)))
