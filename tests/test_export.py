"""fast_ast_jax.export and .exported: a checkpoint as a serialised waveform -> logits
function (the embedding export, --embed, is tested with the pretraining checkpoints in
tests/test_pretrain_train.py)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from fast_ast_jax import export, exported
from fast_ast_jax.audio import features
from fast_ast_jax.audio.fbank_jax import pad_waves
from fast_ast_jax.checkpoints import load as load_checkpoint
from tests.helpers import stored_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A trained AST checkpoint (the stored one: no training here)."""
    return stored_workdir("ast", tmp_path_factory.mktemp("export") / "w")


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    """The command, given a workdir that does not exist: status 2, one `error:` line naming
    it, no artifact written."""
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", str(missing), "--out", str(tmp_path / "m.jaxexport")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no-such-run" in err[0]
    assert not (tmp_path / "m.jaxexport").exists()


@pytest.mark.slow
def test_exported_artifact_matches_the_live_model(workdir, capsys):
    out = workdir / "model.jaxexport"
    export.main(["--checkpoint", str(workdir), "--out", str(out)])  # the CLI
    assert "wrote" in capsys.readouterr().out
    call, spec = exported.load(out)
    restored = load_checkpoint(workdir)
    assert spec["labels"] == list(restored.labels) and spec["batch"] is None
    assert spec["outputs"] == ["logits (B, num_labels) float32"]
    assert spec["frontend"] == restored.frontend.to_dict()
    assert json.loads((workdir / "model.jaxexport.json").read_text()) == spec
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(n).astype(np.float32)
             for n in (spec["samples"] + 500, 4000, 300)]  # long, short, under one window
    batch = pad_waves(clips, samples=spec["samples"])
    got = np.asarray(call(batch["wave"], batch["wave_len"]))
    live = jax.jit(exported.waveform_function(restored, where=str(workdir))[0])
    np.testing.assert_allclose(got, live(batch["wave"], batch["wave_len"]), atol=1e-5)
    # The host front-end path (what predict does on a CPU) agrees as well.
    x = np.stack([features(c, frontend=restored.frontend) for c in clips])
    host = jax.jit(lambda p, x: restored.model.apply({"params": p}, x, train=False))(
        restored.params, x)  # one program, not one per op
    np.testing.assert_allclose(got, host, atol=1e-3)
    assert got.shape == (3, len(restored.labels))
    # Symbolic batch: another batch size runs the same artifact.
    one = pad_waves(clips[:1], samples=spec["samples"])
    np.testing.assert_allclose(call(one["wave"], one["wave_len"]), got[:1], atol=1e-5)


def test_fixed_batch_and_length(workdir):
    out = workdir / "fixed.jaxexport"
    spec = exported.export_checkpoint(workdir, out, batch=2, seconds=0.25,
                                      platforms=("cpu",))
    assert spec["samples"] == 4000 and spec["batch"] == 2
    call, _ = exported.load(out)
    wave = np.zeros((2, 4000), np.float32)
    assert call(wave, np.array([4000, 10], np.int32)).shape == (2, len(spec["labels"]))
    with pytest.raises(Exception):
        call(np.zeros((3, 4000), np.float32), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="one analysis window"):
        exported.export_checkpoint(workdir, out, seconds=0.001)
    with pytest.raises(ValueError, match="come with --embed"):
        exported.export_checkpoint(workdir, out, tokens=True)
