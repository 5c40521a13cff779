"""The model registry (fast_ast_jax.models.KINDS): a new model kind is one module and one
entry, and then trains, evaluates, predicts, dumps teacher logits, loads from its
checkpoint and initialises a run, with no change to the trainer, pipelines, commands or
the config reader (train.spec reads any kind's constructor fields from config.model)."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fast_ast_jax import checkpoints, models, teacher_logits
from fast_ast_jax.inference import predict
from fast_ast_jax.train import loop
from fast_ast_jax.train.dump import dump
from fast_ast_jax.train.evaluation import evaluate_checkpoint
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from fast_ast_jax.train.validate import validate
from tests.helpers import load_config, write_folder


# --- the new kind: one module ------------------------------------------------------------

class MixerBlock(nn.Module):
    """MLP-mixer block over (B, tokens, width): a token-mixing then a channel-mixing MLP."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x).swapaxes(1, 2)  # (B, W, T): mix along time
        x = x + nn.Dense(x.shape[1])(nn.gelu(nn.Dense(self.hidden)(y))).swapaxes(1, 2)
        y = nn.LayerNorm()(x)
        return x + nn.Dense(x.shape[2])(nn.gelu(nn.Dense(self.hidden)(y)))


class TinyMixer(nn.Module):
    """A padded model kind: (B, frames, bins) fbank -> frames grouped by `chunk` into
    tokens -> mixer blocks -> mean -> logits (B, num_classes) float32."""

    num_classes: int
    num_mel_bins: int = 128
    frames: int = 1024
    chunk: int = 8
    width: int = 16
    depth: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        b, frames, bins = x.shape
        tokens = frames // self.chunk
        x = x[:, :tokens * self.chunk].reshape(b, tokens, self.chunk * bins)
        x = nn.Dense(self.width, dtype=self.dtype)(x)
        for _ in range(self.depth):
            x = MixerBlock(2 * self.width)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean(axis=1)).astype(jnp.float32)


# --- ... and one registry entry -----------------------------------------------------------

@pytest.fixture
def mixer_kind(monkeypatch):
    monkeypatch.setitem(models.KINDS, "mixer", models.Kind(TinyMixer))


def mixer_config(**top):
    """configs/test.py with the mixer, its own fields in config.model.mixer (over
    config.model's width and depth)."""
    c = load_config("test")  # 32 synthetic training clips, 16 eval clips
    c.model.name = "mixer"
    c.model.mixer = ml_collections.ConfigDict(dict(chunk=8, width=16, depth=1))
    c.update(**{"num_steps": 3, "checkpoint_every": 3, "log_every": 1, **top})
    return c


def test_config_reader_knows_no_kind(mixer_kind):
    """train.spec reads the new kind's fields with no code of its own: the class's
    constructor fields from the front-end, config.model and its block."""
    c = mixer_config()
    c.model.dtype = "bfloat16"
    run = read_config(c)
    assert run.model.name == "mixer"
    assert run.model.fields == dict(num_mel_bins=32, frames=48, dtype="bfloat16", chunk=8,
                                    width=16, depth=1)
    model = build_model(run.model, num_classes=3)
    assert model == TinyMixer(num_classes=3, num_mel_bins=32, frames=48, chunk=8, width=16,
                              depth=1, dtype=jnp.bfloat16)
    c = mixer_config()
    c.model.mixer.chunks = 4
    with pytest.raises(ValueError, match=r"config\.model\.mixer\.chunks: not a field of "
                                         r"TinyMixer"):
        read_config(c)


@pytest.mark.slow
def test_new_kind_trains_evaluates_predicts_dumps_and_loads(mixer_kind, tmp_path):
    c = mixer_config()
    final = loop.train_and_evaluate(c, str(tmp_path / "w"))
    assert final["step"] == 3 and np.isfinite(final["train_loss"])
    assert final["eval_num_clips"] == 16

    # loads from its checkpoint: the same kind, fields and params
    bundle = checkpoints.load(tmp_path / "w")
    assert type(bundle.model) is TinyMixer and bundle.model.chunk == 8
    assert models.model_name(bundle.model) == "mixer" and not models.is_packed(bundle.model)
    for a, b in zip(jax.tree.leaves(bundle.params), jax.tree.leaves(final["state"].params)):
        np.testing.assert_array_equal(a, np.asarray(b))

    # evaluates (evaluate.py) to the end-of-training accuracy
    rows = evaluate_checkpoint(tmp_path / "w", echo=None)
    assert rows[0]["accuracy"] == pytest.approx(final["eval_accuracy"])
    assert rows[0]["xla_flops"] > 0  # not an AST: XLA's count

    # predicts on audio files
    write_folder(tmp_path / "clips", [("a.wav", "x", "1"), ("b.wav", "y", "1")], sr=16000)
    files = [str(tmp_path / "clips" / "audio" / f) for f in ("a.wav", "b.wav")]
    out = predict(files, checkpoint=tmp_path / "w", top_k=2)
    assert len(out) == 2 and len(out[0]) == 2

    # dumps teacher logits (distill dump), one row per training clip, equal to its forward
    teacher = dump(tmp_path / "w", out=tmp_path / "t.npz", echo=None)
    assert teacher.logits.shape == (32, len(bundle.labels))
    assert teacher_logits.load(tmp_path / "t.npz").teacher["model_class"] == "mixer"

    # initialises a run of the same kind (config.init_from) with its weights
    c = mixer_config(num_steps=1, init_from=str(tmp_path / "w"))
    c.data.eval = {}
    assert loop.train_and_evaluate(c, str(tmp_path / "w2"))["step"] == 1


def test_kind_errors_are_one_line(mixer_kind):
    c = mixer_config()
    c.model.name = "mixr"
    with pytest.raises(ValueError, match=r"config.model.name='mixr': use one of \["):
        validate(read_config(c), device_count=1)
    c = mixer_config(init_from="/nonexistent")
    with pytest.raises(ValueError, match="TinyMixer can only start from a training "
                                         "checkpoint of its own kind"):
        checkpoints.init_params("x.pth", build_model(read_config(c).model, num_classes=2),
                                fresh={})


def test_elastic_is_chosen_by_name_and_old_configs_still_mean_it():
    """model.name "elastic" with a config.elastic block is the packed model; a config from
    before the name (an elastic block, name "ast"), as older checkpoints store it, still
    builds an ElasticAST; a block with another kind, or the name without a block, is an
    error naming the field."""
    c = load_config("test_elastic")
    assert c.model.name == "elastic" and read_config(c).model.name == "elastic"
    assert models.is_packed(build_model(read_config(c).model, num_classes=3))
    c.model.name = "ast"
    assert type(build_model(read_config(c).model, num_classes=3)) is models.ElasticAST
    validate(read_config(c), device_count=1)
    c.model.name = "cnn"
    with pytest.raises(ValueError, match="config.model.name='cnn': packed training"):
        validate(read_config(c), device_count=1)
    c = load_config("test")
    c.model.name = "elastic"
    with pytest.raises(ValueError, match="config.model.name='elastic': a packed model "
                                         "needs a config.elastic block"):
        validate(read_config(c), device_count=1)


def test_ast_and_elastic_share_one_definition_of_their_fields():
    shared = models.ast.field_names(models.ast.Encoder)
    for cls in (models.AST, models.ElasticAST):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        assert all(fields[k] == getattr(models.ast.Encoder, k) for k in shared)
    assert models.ElasticAST().fstride == models.AST().fstride == 10
