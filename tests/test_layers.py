"""The folder layering of fast_ast_jax (tools/layers.py): no import runs back up, and the
config, read once, walks down."""
from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "tools" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_folder_level_import_runs_back_up_the_layers(layers):
    edges = layers.arrows()
    assert ("train", "models") in edges and ("checkpoints", "models") in edges
    assert layers.upward(edges) == []
    assert layers.upward({("models", "train")}) == [("models", "train")]


def test_the_config_is_read_once_and_walks_down(layers):
    """The walk of the config from train_and_evaluate (tools/layers.py --walk): the
    description it is read into reaches every part of the run, climbing back up at most 8
    times and entering no module twice for the same field."""
    order = layers.walk()
    names = [q.removeprefix("fast_ast_jax.") for q, *_ in order]
    # read once, then the description: validation, both pipelines, the loop
    assert names[:2] == ["train.loop.train_and_evaluate", "train.spec.read_config"]
    for part in ("train.validate.check_elastic", "train.task._packed", "train.task._padded",
                 "train.task.build_model", "train.loop.run_steps"):
        assert part in names
    assert not any(n.startswith("models.") and "config" in n for n in names)
    layer = lambda q: layers.LAYERS[layers.unit(layers.file_of(q))]
    assert sum(layer(b) > layer(a) for (a, *_), (b, *_) in zip(order, order[1:])) <= 8
    assert layers.revisits(order) == []
