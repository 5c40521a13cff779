"""CNN teacher: shapes, both poolings, gradients, clear errors."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fast_ast_jax.models.cnn import DepthwiseConv3x3, create_cnn


def _init(model, x):
    return jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]


@pytest.mark.parametrize("pooling,frames", [("attention", 37), ("mean", 48)])
@pytest.mark.slow
def test_shapes_and_finite_under_jit(pooling, frames):
    model = create_cnn("tiny", num_classes=7, pooling=pooling, num_mel_bins=32)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, frames, 32))
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(_init(model, x), x)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)


@pytest.mark.slow
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


@pytest.mark.parametrize("shape", [(2, 32, 32, 8), (2, 33, 17, 8), (1, 5, 4, 16), (2, 1, 2, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_matches_grouped_conv(shape, stride):
    """Shifted multiply-adds == nn.Conv(feature_group_count=C, SAME): values, params, init."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = nn.Conv(shape[-1], (3, 3), strides=stride, padding="SAME",
                  feature_group_count=shape[-1], use_bias=False)
    ours = DepthwiseConv3x3(stride)
    params = ref.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(ours.init(jax.random.PRNGKey(1), x)["params"]["kernel"],
                                  params["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=2e-6)
    grads = [jax.grad(lambda p, m=m: (m.apply(p, x) ** 2).sum())(params)["params"]["kernel"]
             for m in (ref, ours)]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-4)
