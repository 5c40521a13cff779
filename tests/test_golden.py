"""Checkpoints stored by an earlier release (tests/data/golden, written once by
tests/data/make_golden.py) load, predict, evaluate, train and resume on this code exactly as
on the code that wrote them: the same outputs, the same data order, the same losses and
params. A refactor that changes any of it fails here; a change of behaviour that is meant
has to say so by regenerating the files (make_golden.py's docstring).

Tolerances. The stored numbers were made on the CPU with XLA's optimisations on (as users
run); the tests compile with most optimisations off and the older CPU fusion emitters
(tests/xla_settings.py), so even today's code reproduces them only to float32 rounding: other
fusions, other orders of floating-point operations, as a refactor may legitimately bring.
Measured by running these checks with optimisations off against the stored numbers
(2026-12-06): forwards, predict and embed scores, losses and the reconstruction loss moved by
<= 9e-7, params after 3 resumed steps by <= 2.5e-5 (Adam normalises each update, so rounding
noise in a near-zero gradient moves its param by up to a fraction of lr). FORWARD_TOL (1e-5)
holds outputs and losses, TRAIN_TOL (1e-4) trained params. A change of behaviour is far
outside both: another init, data order, augmentation draw or update rule moves params by
~lr (3e-3) per step and losses by ~1e-2.
"""
from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from fast_ast_jax import checkpoints
from fast_ast_jax.train import loop
from tests.data import make_golden as golden

FORWARD_TOL = 1e-5
TRAIN_TOL = 1e-4

@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A copy of tests/data/golden (a run must not write into the repo), the working
    directory (the stored configs name their data relative to it)."""
    copy = tmp_path / "golden"
    shutil.copytree(golden.GOLDEN, copy)
    monkeypatch.chdir(copy)
    return copy


def expected(kind: str) -> dict[str, np.ndarray]:
    with np.load(golden.GOLDEN / f"{kind}.npz") as f:
        return dict(f)


def assert_same(got: dict, want: dict, keys, *, tol: float) -> None:
    for key in keys:
        assert key in got, f"{key} missing"
        g, w = np.asarray(got[key]), want[key]
        if w.dtype.kind in "fc":
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=key)
        else:
            np.testing.assert_array_equal(g, w, err_msg=key)


def assert_params_close(got, want) -> None:
    """Every trained param within TRAIN_TOL, except the attention's key bias (qkv bias row
    1): it adds q.b_k to every logit of a query's row, which the softmax cancels, so its
    gradient is zero up to rounding and Adam turns that noise into steps of ~lr in either
    direction (measured 2026-12-06: up to 8.8e-4 apart after 6 steps under the tests' XLA
    settings, identical under the settings that made the files). What it holds shows
    nowhere: the outputs and losses compared elsewhere do not depend on it."""
    def check(path, a, b):
        a, b = np.asarray(a), np.asarray(b)
        if jax.tree_util.keystr(path).endswith("['qkv']['bias']"):
            a, b = a[[0, 2]], b[[0, 2]]  # (3 = q/k/v, heads, head width): q and v
        np.testing.assert_allclose(a, b, rtol=TRAIN_TOL, atol=TRAIN_TOL,
                                   err_msg=jax.tree_util.keystr(path))

    jax.tree_util.tree_map_with_path(check, got, want)


def test_stored_files_are_small_and_complete():
    """The fixture stays a small, committed set: every kind's workdir and expectations."""
    total = sum(p.stat().st_size for p in golden.GOLDEN.rglob("*") if p.is_file())
    assert total < 1.5e6, f"tests/data/golden holds {total} bytes"
    for kind in golden.KINDS:
        assert checkpoints.is_checkpoint_dir(golden.GOLDEN / kind)
        assert (golden.GOLDEN / f"{kind}.npz").is_file()
    for path in golden.GOLDEN.rglob("*"):  # no absolute path in the repo
        assert not path.is_file() or b"/tests/data/golden" not in path.read_bytes(), path


@pytest.mark.parametrize("kind", golden.KINDS)
def test_loads_predicts_and_evaluates_as_made(kind, stored):
    """checkpoints.load, the model's forward, predict (or embed) on generated clips and
    evaluate.py's table give what the code that stored the checkpoint gave."""
    want = expected(kind)
    got = golden.outputs(kind, stored / kind, stored)
    trained = {k for k in want if k.startswith(("train_", "resume_", "params/"))}
    assert set(got) == set(want) - trained and int(got["step"]) == golden.STEPS
    exact = [k for k in got if want[k].dtype.kind not in "fc"]
    assert_same(got, want, exact, tol=0)
    # accuracy is a count of clips: exact; macs an analytic count: exact
    assert_same(got, want, [k for k in got if k.startswith("evaluate_")], tol=0)
    assert_same(got, want, [k for k in got if k not in exact], tol=FORWARD_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", golden.KINDS)
def test_resumes_as_made(kind, stored):
    """Resuming the stored run for more steps (past an epoch boundary) gives the losses
    (hence the same batches in the same order), final evaluation and params that the code
    that stored it gave."""
    want = expected(kind)
    got = golden.resumed(kind, stored / kind)
    params = [k for k in want if k.startswith("params/")]
    assert set(params) == {k for k in got if k.startswith("params/")}
    assert_same(got, want, ["resume_losses"], tol=FORWARD_TOL)
    assert_same(got, want, params, tol=TRAIN_TOL)
    if kind == "mae":
        assert_same(got, want, ["resume_eval"], tol=FORWARD_TOL)
    else:
        assert_same(got, want, ["resume_eval"], tol=0)


@pytest.mark.slow
def test_trains_from_scratch_and_from_mid_epoch_as_made(stored):
    """The AST run from step 0 (init, every batch, the checkpoints at steps 3 and 6), and
    again from its step-3 checkpoint (mid-epoch: 2 steps per epoch), reaches the stored
    checkpoints' params and the stored losses."""
    want = expected("ast")
    fresh = stored / "fresh"
    final = loop.train_and_evaluate(golden.make_config("ast"), str(fresh))
    losses = golden.losses(fresh)
    np.testing.assert_allclose([losses[s] for s in range(1, golden.STEPS + 1)],
                               want["train_losses"], rtol=FORWARD_TOL, atol=FORWARD_TOL)
    assert final["eval_accuracy"] == want["train_eval"]
    for step in (3, golden.STEPS):
        assert_params_close(checkpoints.load(fresh, step=step).params,
                            checkpoints.load(stored / "ast", step=step).params)

    shutil.rmtree(stored / "ast" / "checkpoints" / str(golden.STEPS))
    loop.train_and_evaluate(golden.make_config("ast"), str(stored / "ast"))
    losses = golden.losses(stored / "ast")
    np.testing.assert_allclose([losses[s] for s in range(4, golden.STEPS + 1)],
                               want["train_losses"][3:], rtol=FORWARD_TOL, atol=FORWARD_TOL)
    assert_params_close(checkpoints.load(stored / "ast").params,
                        checkpoints.load(golden.GOLDEN / "ast").params)
