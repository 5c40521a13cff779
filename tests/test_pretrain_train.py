"""Masked pretraining through the one trainer (model.name "mae", configs/test_pretrain.py):
the loss falls, resume and 8-device sharding work, init_from loads the encoder into the
AST-family kinds, and what cannot work is refused in one line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax import checkpoints, models
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.checkpoints.store import Checkpointer
from fast_ast_jax.models import mae
from fast_ast_jax.train import loop
from fast_ast_jax.train.forward import kind_of
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import make_task
from tests import xla_settings
from tests.helpers import ROOT, folder_data, load_config, stored_workdir, tiny, write_folder


def logged(workdir, key="train/loss"):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(s)[key] for s in lines if key in json.loads(s)]


def pretrain_config():
    """configs/test_pretrain.py for 40 steps with 2 encoder blocks (so that ToMe has a block
    to merge in), checkpoints at steps 20 and 40."""
    c = load_config("test_pretrain")
    c.update(num_steps=40, log_every=5, checkpoint_every=20)
    c.model.depth = 2
    return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The `pretrain_config` run (shared by the module's tests) and its final result."""
    workdir = tmp_path_factory.mktemp("pretrain") / "work"
    return workdir, loop.train_and_evaluate(pretrain_config(), str(workdir))


@pytest.mark.slow
def test_pretraining_loss_falls_and_is_evaluated(pretrained):
    workdir, final = pretrained
    losses = logged(workdir)
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    # evaluation reports the reconstruction loss (fixed mask key), no accuracy
    assert np.isfinite(final["eval_loss"]) and final["eval_num_clips"] == 16
    assert "eval_accuracy" not in final and final["train_compilations"] == 1
    bundle = checkpoints.load(workdir)
    assert isinstance(bundle.model, mae.MAE) and bundle.labels == () and bundle.step == 40
    ckpt = Checkpointer(workdir / "checkpoints", create=False)
    _, meta = ckpt.restore()
    ckpt.close()
    assert meta["model_class"] == "mae" and meta["model"]["mask_ratio"] == 0.75


@pytest.mark.slow
def test_pretraining_resumes_where_it_stopped(pretrained, tmp_path):
    """The shared run, stopped after its step-20 checkpoint (the copy's later one removed)
    and resumed, ends with the params of the run that went straight through."""
    workdir, straight = pretrained
    stopped = shutil.copytree(workdir, tmp_path / "b")
    shutil.rmtree(stopped / "checkpoints" / "40")
    resumed = loop.train_and_evaluate(pretrain_config(), str(stopped))
    assert resumed["step"] == 40
    assert logged(stopped)[-4:] == pytest.approx(logged(workdir)[-4:], rel=1e-5)
    chex.assert_trees_all_close(resumed["state"].params, straight["state"].params,
                                rtol=1e-6, atol=1e-7)


def _fine_tune_config(kind: str):
    if kind == "elastic":
        c = load_config("test_elastic")  # 2 blocks, grid of 64 frames: positions resized
    else:
        c = load_config("test")
        c.model.depth = 2
        if kind == "tome":
            c.model.tome_r = 2
        if kind == "topk":
            c.model.update(prune_keep_rate=0.5, prune_layers=(0,))
        if kind == "ast_longer":
            c.frontend.target_frames = 80  # another grid: pos_embed resized
    return c


@pytest.mark.parametrize("kind", ["ast", "tome", "topk", "ast_longer", "elastic"])
@pytest.mark.slow
def test_init_from_pretraining_loads_the_encoder(pretrained, kind, tmp_path):
    workdir, _ = pretrained
    c = _fine_tune_config(kind)
    task = make_task(read_config(c), workdir=tmp_path)
    model = task.model
    fresh = model.init({"params": jax.random.PRNGKey(1)},
                       kind_of(model).inputs(task.example))["params"]
    params = checkpoints.init_params(workdir, model, fresh=fresh)
    encoder = mae.encoder_params(checkpoints.load(workdir).params)
    for name in ("patch_embed", "block_0", "block_1", "norm"):  # pretrained
        chex.assert_trees_all_equal(params[name], encoder[name])
    for name in ("head_norm", "head"):  # fresh
        chex.assert_trees_all_equal(params[name], fresh[name])
    assert not any(k.startswith("decoder") for k in params)
    if kind in ("ast", "tome", "topk"):  # same grid: the position table as pretrained
        np.testing.assert_array_equal(params["pos_embed"], encoder["pos_embed"])
    if kind == "ast_longer":  # 80 frames: 4 patch columns, not 2; class rows kept
        assert params["pos_embed"].shape[1] > encoder["pos_embed"].shape[1]
        np.testing.assert_array_equal(params["pos_embed"][:, :2], encoder["pos_embed"][:, :2])
    jax.tree.map(lambda a, b: np.testing.assert_equal(np.shape(a), np.shape(b)),
                 params, fresh)


@pytest.fixture(scope="module")
def fine_tuned(pretrained, tmp_path_factory):
    """train.py --config configs/test.py --config.init_from=<pretraining workdir>, one step
    at lr 0 (the params stay as they started)."""
    workdir, _ = pretrained
    c = _fine_tune_config("ast")
    c.update(num_steps=1, init_from=str(workdir))
    c.optim.lr = 0.0
    ft = tmp_path_factory.mktemp("ft") / "work"
    return ft, loop.train_and_evaluate(c, str(ft))


@pytest.mark.slow
def test_fine_tune_run_starts_from_the_pretrained_encoder(pretrained, fine_tuned):
    workdir, _ = pretrained
    _, final = fine_tuned
    encoder = mae.encoder_params(checkpoints.load(workdir).params)
    chex.assert_trees_all_close(final["state"].params["block_1"], encoder["block_1"])
    assert np.isfinite(final["eval_accuracy"])


# SSAST's frame patches on the test configs' 32 mel bins: a patch spans every bin and 2
# frames, one token per 2-frame column.
FRAMES = dict(patch_size=(32, 2), fstride=32, tstride=2)


@pytest.fixture(scope="module")
def pretrained_frames(tmp_path_factory):
    """configs/test_pretrain.py with frame patches, 4 steps, resumed from step 2."""
    c = load_config("test_pretrain")
    c.model.update(**FRAMES)
    c.update(num_steps=2, checkpoint_every=2)
    workdir = tmp_path_factory.mktemp("pretrain_frames") / "work"
    loop.train_and_evaluate(c, str(workdir))
    c.num_steps = 4
    return workdir, loop.train_and_evaluate(c, str(workdir))


@pytest.mark.slow
def test_frame_patches_pretrain_and_resume(pretrained_frames):
    workdir, final = pretrained_frames
    assert final["step"] == 4 and np.isfinite(final["eval_loss"])
    bundle = checkpoints.load(workdir)
    model = bundle.model
    assert model.patch_size == (32, 2) and model.grid() == (1, 24)  # 48 frames
    chex.assert_shape(bundle.params["encoder"]["patch_embed"]["kernel"], (32, 2, 1, 64))
    chex.assert_shape(bundle.params["decoder"]["pred"]["kernel"], (32, 64))  # 64 values
    out = model.apply({"params": bundle.params}, np.zeros((2, 48, 32), np.float32))
    chex.assert_shape([out.pred, out.visible], [(2, 24, 64), (2, 6)])


@pytest.mark.parametrize("kind", ["ast", "elastic"])
@pytest.mark.slow
def test_frame_patches_init_from_pretraining(pretrained_frames, kind, tmp_path):
    """The frame-patch encoder initialises an AST and an ElasticAST with the same patch (one
    step at lr 0: the encoder as pretrained); a 16x16 model refuses it in one line."""
    workdir, _ = pretrained_frames
    c = load_config("test_elastic" if kind == "elastic" else "test")
    c.model.update(depth=1, tome_r=0, **FRAMES)
    c.update(num_steps=1, init_from=str(workdir))
    c.optim.lr = 0.0
    final = loop.train_and_evaluate(c, str(tmp_path / "ft"))
    encoder = mae.encoder_params(checkpoints.load(workdir).params)
    for name in ("patch_embed", "block_0"):
        chex.assert_trees_all_close(final["state"].params[name], encoder[name])
    assert final["step"] == 1 and np.isfinite(final["train_loss"])
    c.model.update(patch_size=(16, 16), fstride=16, tstride=16)
    _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "square")),
                    r"init_from .* holds weights for 32x2 patches, the model has 16x16 "
                    r"patches \(patch_size=16\); use patch_size=\(32, 2\)")


@pytest.mark.parametrize("update,match", [
    (dict(patch_size=(64, 2), fstride=64), r"^config\.model\.patch_size=\(64, 2\): a patch of "
     r"64 mel bins is taller than the input's frontend\.num_mel_bins=32"),
    (dict(patch_size=(32, 64)), r"^config\.model\.patch_size=\(32, 64\): a patch of 64 frames "
     r"is longer than the input's frontend\.target_frames=48"),
    (dict(tstride=3), r"^config\.model\.tstride=3: is larger than the patch's 2 frames"),
    (dict(patch_size=(32, 0)), r"^config\.model\.patch_size=\(32, 0\): give an int > 0"),
])
@pytest.mark.parametrize("name", ["test_pretrain", "test"])
def test_impossible_patches_are_one_line(name, update, match, tmp_path):
    c = load_config(name)
    c.model.update(**{**FRAMES, **update})
    _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "w")), match)


def _one_line_error(fn, match):
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.slow
def test_unlabeled_folder_pretrains_and_is_refused_by_supervised_kinds(tmp_path):
    write_folder(tmp_path / "audio_src", [(f"c{i}.wav", "a", "") for i in range(8)])
    c = load_config("test_pretrain")
    c.data.source = "folder"
    c.data.train = {"audio_dir": str(tmp_path / "audio_src" / "audio")}  # no CSV, no labels
    c.data.eval = {}
    c.update(num_steps=2, batch_size=4)
    final = loop.train_and_evaluate(c, str(tmp_path / "mae"))
    assert final["step"] == 2 and np.isfinite(final["train_loss"])
    c.model.name = "ast"
    _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "ast")),
                    r"^config\.data\.train=.*no labels.*model\.name='mae'")


@pytest.fixture(scope="module")
def stored_mae(tmp_path_factory):
    """A masked-pretraining checkpoint for the refusals (the stored one: no training)."""
    return stored_workdir("mae", tmp_path_factory.mktemp("stored") / "mae")


def test_refusals_are_one_line(stored_mae, tmp_path):
    c = load_config("test_pretrain")
    c.distill.teacher_logits = str(tmp_path / "t.npz")
    _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "d")),
                    r"^config\.distill\.teacher_logits=.*no logits")
    c = load_config("test_elastic")
    c.model.name = "mae"
    msg = _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "e")),
                          r"^config\.model\.name='mae'.*padded clips")
    assert "init_from" in msg
    c = load_config("test_pretrain")
    c.model.tome_r = 2
    _one_line_error(lambda: loop.train_and_evaluate(c, str(tmp_path / "t")),
                    r"^config\.model\.tome_r=2: token reduction")
    # a CNN cannot take an AST encoder
    cnn = models.create_cnn(num_classes=4)
    _one_line_error(lambda: checkpoints.init_params(stored_mae, cnn, fresh={}),
                    r"masked-pretraining \(mae\) checkpoint.*not a CNNTeacher")


def test_predict_evaluate_dump_refuse_a_pretraining_checkpoint(stored_mae, tmp_path):
    from fast_ast_jax.exported import export_checkpoint
    from fast_ast_jax.inference import predict_files
    from fast_ast_jax.train.dump import dump
    from fast_ast_jax.train.evaluation import evaluate_checkpoint

    workdir = stored_mae
    for fn in (lambda: list(predict_files([], checkpoint=workdir)),
               lambda: evaluate_checkpoint(workdir, echo=None),
               lambda: dump(workdir, out=tmp_path / "t.npz"),
               lambda: export_checkpoint(workdir, tmp_path / "m.jaxexport")):
        _one_line_error(fn, r"no classifier head.*fast_ast_jax.export --embed")


SHARDED = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, sys.argv[1])
    from fast_ast_jax.train import loop
    from tests.helpers import load_config
    assert jax.device_count() == 8
    c = load_config("test_pretrain")
    c.update(num_steps=4, log_every=1, param_sharding="fsdp")
    final = loop.train_and_evaluate(c, sys.argv[2])
    print(json.dumps({"eval_loss": final["eval_loss"]}))
""")


@pytest.mark.slow
def test_sharded_pretraining_matches_one_device(tmp_path):
    """8 simulated devices (a subprocess: XLA flags are read when jax starts) give the
    losses of 1 device: the mask key and the loss's clip weighting do not depend on the
    split."""
    proc = subprocess.run([sys.executable, "-c", SHARDED, str(ROOT), str(tmp_path / "eight")],
                          capture_output=True, text=True, env=xla_settings.with_devices(8),
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.loads(proc.stdout.strip().splitlines()[-1])
    c = load_config("test_pretrain")
    c.update(num_steps=4, log_every=1, param_sharding="fsdp")
    one = loop.train_and_evaluate(c, str(tmp_path / "one"))
    np.testing.assert_allclose(logged(tmp_path / "eight"), logged(tmp_path / "one"),
                               rtol=1e-4)
    np.testing.assert_allclose(eight["eval_loss"], one["eval_loss"], rtol=1e-4)


@pytest.mark.parametrize("arg", ["fold", "frames"])
@pytest.mark.slow
def test_fsdd_pretrain_then_fine_tune_on_generated_folder(tmp_path, arg):
    """configs/fsdd_pretrain.py's two commands (shrunk) on a generated FSDD-like folder:
    pretraining reads the CSV without its labels, fine-tuning starts from its encoder;
    `:frames` does both with 128x2 frame patches."""
    rows = [(f"{i}.wav", str(i % 3), "train" if i < 8 else "test") for i in range(12)]
    paths = folder_data(tmp_path, ("filename", "label", "fold"), rows)
    bins = 128 if arg == "frames" else 32  # a frame patch spans all 128 bins
    pre = tiny(load_config("fsdd_pretrain", arg), bins=bins)
    assert pre.model.name == "mae" and pre.data.train.label_column == ""
    assert pre.model.patch_size == ((128, 2) if arg == "frames" else (16, 16))
    for split in ("train", "eval"):
        pre.data[split].update(paths)
    final = loop.train_and_evaluate(pre, str(tmp_path / "pre"))
    assert np.isfinite(final["eval_loss"]) and final["eval_num_clips"] == 4
    ft = tiny(load_config("fsdd", arg), bins=bins)
    for split in ("train", "eval"):
        ft.data[split].update(paths)
    ft.update(init_from=str(tmp_path / "pre"))
    final = loop.train_and_evaluate(ft, str(tmp_path / "ft"))
    assert final["eval_num_clips"] == 4 and np.isfinite(final["eval_accuracy"])


def _audio(tmp_path):
    """One clip of the trained input length or less, one of 3 s (several windows), one
    corrupt file."""
    (tmp_path / "in").mkdir()
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "in" / "a.wav", 0.3 * np.sin(2 * np.pi * 440 * t[:7000]), 16000)
    sf.write(tmp_path / "in" / "b.wav", 0.3 * np.sin(2 * np.pi * 300 * np.tile(t, 3)), 16000)
    (tmp_path / "in" / "c.wav").write_bytes(b"RIFF not audio")
    return tmp_path / "in"


@pytest.mark.parametrize("kind", ["mae", "ast"])
@pytest.mark.slow
def test_embed_command(pretrained, fine_tuned, kind, tmp_path, capsys):
    """python -m fast_ast_jax.embed: embeddings of the good files (a short clip's is the
    model's own: MAE.encode, or the AST's pooled pre-head features), the bad one reported,
    exit status 1; --tokens gives each window's patch tokens."""
    from flax import linen as nn

    from fast_ast_jax.audio.features import features
    from fast_ast_jax.embed import main

    workdir = (pretrained if kind == "mae" else fine_tuned)[0]
    folder, out = _audio(tmp_path), tmp_path / "e.npz"
    assert main([str(folder), "--checkpoint", str(workdir), "--out", str(out),
                 "--tokens"]) == 1
    assert "1 of 3 files failed" in capsys.readouterr().err
    bundle = checkpoints.load(workdir)
    with np.load(out) as d:
        assert [Path(f).name for f in d["files"]] == ["a.wav", "b.wav"]
        assert [Path(f).name for f in d["failed"]] == ["c.wav"] and "c.wav" in d["errors"][0]
        emb, tokens, token_file = d["embeddings"], d["tokens"], d["token_file"]
    fe = bundle.frontend
    n = fe.target_frames
    windows_b = int((token_file == 1).sum())
    assert emb.shape == (2, 64) and (token_file == 0).sum() == 1 and windows_b > 1
    f_dim, t_dim = bundle.model.grid()
    assert tokens.shape == (1 + windows_b, f_dim * t_dim, 64)
    wave, _ = sf.read(folder / "a.wav", dtype="float32")
    x = jnp.asarray(features(wave, frontend=fe))[None]  # padded to the trained input
    assert x.shape[1] == n
    if kind == "mae":
        clip, patch = bundle.model.apply({"params": bundle.params}, x,
                                         method=mae.MAE.encode)
        np.testing.assert_allclose(tokens[0], patch[0], rtol=1e-4, atol=1e-5)
    else:  # the head applied to the embedding gives the AST's logits
        p = bundle.params
        z = nn.LayerNorm(epsilon=bundle.model.head_ln_eps, use_fast_variance=False).apply(
            {"params": p["head_norm"]}, jnp.asarray(emb[:1]))
        clip = bundle.model.apply({"params": p}, x)
        emb = np.asarray(nn.Dense(len(bundle.labels)).apply({"params": p["head"]}, z))
    np.testing.assert_allclose(emb[:1], clip, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_embed_parquet_holds_what_the_npz_holds(pretrained, tmp_path, capsys):
    """--out x.parquet: one row per input file (the failed one with its error and nulls),
    the .npz's embeddings; --tokens: x.tokens.parquet, one row per window, the .npz's tokens
    as a (f_dim, t_dim, W) tensor column. A run where every file fails still writes both."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fast_ast_jax.embed import main

    workdir, _ = pretrained
    folder = _audio(tmp_path)
    for out in ("e.npz", "e.parquet"):
        assert main([str(folder), "--checkpoint", str(workdir), "--out", str(tmp_path / out),
                     "--tokens"]) == 1
    assert "e.parquet + " in capsys.readouterr().out
    clips = pq.read_table(tmp_path / "e.parquet")
    assert clips.column_names == ["file", "duration_s", "embedding", "error"]
    column = clips.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(column) and column.list_size == 64
    assert column.value_type == pa.float32()
    rows = clips.to_pylist()
    assert [Path(r["file"]).name for r in rows] == ["a.wav", "b.wav", "c.wav"]
    assert rows[2]["embedding"] is None and rows[2]["duration_s"] is None
    assert "c.wav" in rows[2]["error"] and rows[0]["error"] is None
    windows = pq.read_table(tmp_path / "e.tokens.parquet")
    assert windows.column_names == ["file", "window", "start_s", "end_s", "tokens"]
    f_dim, t_dim = checkpoints.load(workdir).model.grid()
    tokens = windows["tokens"].combine_chunks().to_numpy_ndarray()
    with np.load(tmp_path / "e.npz") as d:
        np.testing.assert_array_equal(np.stack([r["embedding"] for r in rows[:2]]),
                                      d["embeddings"])
        np.testing.assert_allclose([r["duration_s"] for r in rows[:2]], d["duration_s"])
        assert tokens.shape == (len(d["tokens"]), f_dim, t_dim, 64)
        np.testing.assert_array_equal(tokens.reshape(d["tokens"].shape), d["tokens"])
        np.testing.assert_array_equal(windows["file"].to_pylist(),
                                      d["files"][d["token_file"]])
        np.testing.assert_array_equal(np.stack([windows["start_s"], windows["end_s"]], 1),
                                      d["token_window_s"])
        per_file = np.bincount(d["token_file"])
    assert per_file.tolist() == [1, len(tokens) - 1] and len(tokens) > 2
    assert windows["window"].to_pylist() == [0] + list(range(len(tokens) - 1))
    assert main([str(folder / "c.wav"), "--checkpoint", str(workdir), "--out",
                 str(tmp_path / "new" / "bad.parquet"), "--tokens"]) == 1  # makes new/
    bad = pq.read_table(tmp_path / "new" / "bad.parquet").to_pylist()
    assert len(bad) == 1 and bad[0]["embedding"] is None and bad[0]["error"]
    empty = pq.read_table(tmp_path / "new" / "bad.tokens.parquet")
    assert empty.num_rows == 0 and empty.schema.field("tokens").type.shape == [f_dim, t_dim, 64]


@pytest.mark.parametrize("kind", ["mae", "ast"])
@pytest.mark.slow
def test_exported_embedding_is_embeds(pretrained, fine_tuned, kind, tmp_path, capsys):
    """export --embed --tokens: the serialised waveform -> (embedding, tokens) function
    gives what python -m fast_ast_jax.embed gives for the same clip (one window), for a
    pretraining and a fine-tuned AST checkpoint."""
    from fast_ast_jax import export, exported
    from fast_ast_jax.audio.fbank_jax import pad_waves
    from fast_ast_jax.embeddings import embed_files

    workdir = (pretrained if kind == "mae" else fine_tuned)[0]
    out = tmp_path / "emb.jaxexport"
    export.main(["--checkpoint", str(workdir), "--out", str(out), "--embed", "--tokens"])
    assert "embedding (B, 64) float32" in capsys.readouterr().out
    call, spec = exported.load(out)
    f_dim, t_dim = checkpoints.load(workdir).model.grid()
    assert spec["embedding_dim"] == 64 and spec["token_grid"] == [f_dim, t_dim]
    assert spec["labels"] == [] and len(spec["outputs"]) == 2
    folder = _audio(tmp_path)
    wave, _ = sf.read(folder / "a.wav", dtype="float32")
    batch = pad_waves([wave, 0.5 * wave], samples=spec["samples"])
    emb, tokens = map(np.asarray, call(batch["wave"], batch["wave_len"]))
    assert emb.shape == (2, 64) and tokens.shape == (2, f_dim * t_dim, 64)
    (ours,) = embed_files([folder / "a.wav"], checkpoint=workdir, tokens=True)
    np.testing.assert_allclose(emb[0], ours.clip.scores, atol=1e-4)
    np.testing.assert_allclose(tokens[0], ours.clip.windows[0][2][1:], atol=1e-4)
    # without --tokens: the embedding alone
    exported.export_checkpoint(workdir, tmp_path / "clip.jaxexport", embedding=True,
                               platforms=("cpu",))
    call, spec = exported.load(tmp_path / "clip.jaxexport")
    np.testing.assert_allclose(call(batch["wave"], batch["wave_len"]), emb, atol=1e-5)
    assert "token_grid" not in spec and len(spec["outputs"]) == 1


def test_embed_refusals(tmp_path, capsys):
    from fast_ast_jax.embed import main
    from fast_ast_jax.embeddings import encoder

    folder = _audio(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([str(folder), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "e.csv")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "e.csv: use a .npz or .parquet" in err and err.count("\n") == 1
    cnn = models.create_cnn(num_classes=4)
    bundle = Bundle(model=cnn, params={}, frontend=FrontEnd(), labels=("a",) * 4)
    _one_line_error(lambda: encoder(bundle, where="w"), r"^w holds a CNNTeacher")


@pytest.mark.slow
def test_linear_probe_benchmark(pretrained, tmp_path, capsys):
    """benchmarks/linear_probe.py on generated tones (one pitch per label): every feature set
    is probed; the fbank statistics separate the pitches perfectly, so a probe that cannot
    fit or mixes up train and test labels fails here."""
    from benchmarks import linear_probe

    t = np.arange(4000) / 16000
    lines = ["filename,label,fold"]
    for i in range(24):
        sf.write(tmp_path / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (300 + 400 * (i % 3)) * t),
                 16000)
        lines.append(f"{i}.wav,{i % 3},{'train' if i < 18 else 'test'}")
    (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
    out = linear_probe.main(["--checkpoint", str(pretrained[0]), "--csv",
                             str(tmp_path / "meta.csv"), "--pool", "cls", "--pool", "tokens",
                             "--control", "random", "--control", "fbank"])
    assert set(out) == {"embeddings (cls)", "embeddings (tokens)", "random init (cls)",
                        "random init (tokens)", "fbank mean+std"}
    assert out["fbank mean+std"]["test_accuracy"] == 1.0
    assert all(0 <= r["test_accuracy"] <= 1 and r["penalty"] in linear_probe.PENALTIES
               for r in out.values())
    assert "| fbank mean+std | 64 |" in capsys.readouterr().out
