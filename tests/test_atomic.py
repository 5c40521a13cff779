"""fast_ast_jax.atomic: a file appears whole or not at all."""
from __future__ import annotations

import numpy as np
import pytest

from fast_ast_jax import atomic


def test_replacing_writes_then_renames(tmp_path):
    path = tmp_path / "sub" / "a.npz"
    with atomic.replacing(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npz" and tmp != path
        np.savez(tmp, x=np.arange(3))
        assert not path.exists()  # nothing under the real name while writing
    np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
    assert [p.name for p in path.parent.iterdir()] == ["a.npz"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.replacing(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["stats.json"]
