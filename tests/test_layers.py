"""The folder layering of fast_ast_jax (tools/layers.py): no import runs back up, and the
config, read once, walks down."""
from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import ROOT


@pytest.fixture
def layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "tools" / "layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_folder_level_import_runs_back_up_the_layers(layers):
    edges = layers.arrows()
    assert ("train", "models") in edges and ("checkpoints", "models") in edges
    assert ("train", "teacher_logits") in edges and ("distill", "train") in edges
    assert layers.upward(edges) == []
    assert layers.upward({("models", "train")}) == [("models", "train")]


def test_a_folders_main_module_counts_as_its_folder(layers, tmp_path, monkeypatch):
    """A `python -m` command inside a lower folder (its __main__.py) that imports a higher
    one is an arrow from that folder, running back up: not a free pass to the top layer."""
    package = tmp_path / layers.PACKAGE
    for path, text in {"checkpoints/__init__.py": "",
                       "checkpoints/__main__.py": f"from {layers.PACKAGE}.train import loop\n",
                       "train/__init__.py": "", "train/loop.py": ""}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    monkeypatch.setattr(layers, "ROOT", package)
    assert layers.unit(f"{layers.PACKAGE}.checkpoints.__main__") == "checkpoints"
    edges = layers.arrows()
    assert edges == {("checkpoints", "train")}
    assert layers.upward(edges) == [("checkpoints", "train")]


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
