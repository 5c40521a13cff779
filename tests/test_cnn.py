"""CNN teacher: shapes, both poolings, gradients, clear errors."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

from fast_ast_jax.models.cnn import create_cnn


@pytest.mark.parametrize("pooling", ["attention", "mean"])
@pytest.mark.parametrize("frames", [64, 101])
def test_shapes_and_finite_under_jit(pooling, frames):
    model = create_cnn("tiny", num_classes=7, pooling=pooling, num_mel_bins=64)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, frames, 64))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)


def test_train_mode_dropout_and_finite_gradients():
    model = create_cnn("tiny", num_classes=3, num_mel_bins=32, dropout=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 48, 32))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not jnp.allclose(a, b)
    chex.assert_trees_all_equal(model.apply({"params": params}, x),
                                model.apply({"params": params}, x))
    grads = jax.grad(lambda p: model.apply({"params": p}, x).sum())(params)
    chex.assert_tree_all_finite(grads)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown CNNTeacher field.*'widht'"):
        create_cnn("tiny", num_classes=2, widht=3)
    model = create_cnn("tiny", num_classes=2)
    with pytest.raises(ValueError, match=r"\(batch, frames, 128\).*\(2, 50, 64\)"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((2, 50, 64)))
    with pytest.raises(ValueError, match="unknown CNN stages 'huge'"):
        create_cnn("huge", num_classes=2).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 128)))
