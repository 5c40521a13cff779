"""The folder layering of fast_ast_jax (tools/layers.py): no import runs back up."""
from __future__ import annotations

import importlib.util

from tests.helpers import ROOT


def test_no_folder_level_import_runs_back_up_the_layers():
    spec = importlib.util.spec_from_file_location("layers", ROOT / "tools" / "layers.py")
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    edges = layers.arrows()
    assert ("train", "models") in edges and ("checkpoints", "models") in edges
    assert layers.upward(edges) == []
    assert layers.upward({("models", "train")}) == [("models", "train")]
