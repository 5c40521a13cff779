"""Inference as users run it, on every checkpoint kind: predict over many files (bad ones
reported, folders / globs / lists, CSV / JSONL, batched = one at a time), token-reduction
maps, an ElasticAST checkpoint through predict / evaluate / distill dump / init_from, and
the one-line usage errors of the command-line tools."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
import soundfile as sf

from benchmarks import predict as predict_bench
from fast_ast_jax import checkpoints, teacher_logits
from fast_ast_jax.audio.fbank_jax import samples_for_frames
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import load_audio
from fast_ast_jax.bundle import Bundle
from fast_ast_jax.data import make_source, source_ids
from fast_ast_jax.data.packed import PackedPipeline
from fast_ast_jax.models import AST, CNNTeacher, ElasticAST
from fast_ast_jax.predict import main as predict_main
from fast_ast_jax.inference import expand_inputs, predict_files
from fast_ast_jax.train import loop
from fast_ast_jax.train.dump import dump
from fast_ast_jax.train.task import pack_spec
from fast_ast_jax.train.forward import packed_forward
from fast_ast_jax.train.evaluation import evaluate_checkpoint, write_split_maps
from fast_ast_jax.windows import scorer
from tests.helpers import load_config, stored_workdir

ROOT = Path(__file__).resolve().parents[1]


def tone(path: Path, seconds: float, *, freq: float = 440.0, sr: int = 16000) -> str:
    t = np.arange(int(sr * seconds)) / sr
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
    return str(path)


@pytest.fixture(scope="module")
def padded(tmp_path_factory) -> Path:
    """1 step of configs/test.py with ToMe and TopK on in block 0 of 2 (for the maps)."""
    c = load_config("test")
    c.update(num_steps=1, checkpoint_every=1)
    c.data.eval = {"num_examples": 4, "split": "eval", "min_seconds": 0.2, "max_seconds": 0.5}
    c.model.update(depth=2, tome_r=1, prune_keep_rate=0.5, prune_layers=(0,))
    work = tmp_path_factory.mktemp("padded") / "w"
    loop.train_and_evaluate(c, str(work))
    return work


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """1 step of configs/test_elastic.py (ElasticAST, ToMe r=2)."""
    c = load_config("test_elastic")
    c.update(num_steps=1, checkpoint_every=1)
    work = tmp_path_factory.mktemp("packed") / "w"
    loop.train_and_evaluate(c, str(work))
    return work


# --- predict over many files -------------------------------------------------------------


@pytest.mark.slow
def test_mixed_good_and_bad_files(padded, tmp_path, capsys):
    good1, good2 = tone(tmp_path / "good1.wav", 0.4), tone(tmp_path / "good2.flac", 1.5)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really audio" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "nan.wav", np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "adir").mkdir()
    files = [good1, str(tmp_path / "corrupt.wav"), str(tmp_path / "empty.wav"),
             str(tmp_path / "nan.wav"), str(tmp_path / "adir"), str(tmp_path / "missing.wav"),
             good2]
    out = tmp_path / "p.csv"
    # "adir" holds no audio: reported like a bad file (given in a --list file here).
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(files[4:6]) + "\n")
    status = predict_main([*files[:4], files[6], "--list", str(listing), "--checkpoint",
                           str(padded), "--out", str(out), "--top_k", "2"])
    captured = capsys.readouterr()
    assert status == 1
    err = captured.err.strip().splitlines()
    assert err[-1] == "5 of 7 files failed" and "Traceback" not in captured.err
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 5
    for name in ("corrupt.wav", "empty.wav", "nan.wav", "adir", "missing.wav"):
        assert sum(name in line for line in errors) == 1
    printed = captured.out.splitlines()
    assert [line.split(": ")[0] for line in printed] == [good1, good2]
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [*files[:4], good2, *files[4:6]]
    by_file = {r["file"]: r for r in rows}
    assert by_file[good1]["error"] == "" and by_file[good1]["label_1"] != ""
    assert float(by_file[good2]["duration_s"]) == pytest.approx(1.5, abs=1e-3)
    assert int(by_file[good2]["windows"]) > 1  # 1.5 s > the 0.48 s trained input
    assert by_file[files[4]]["error"] and by_file[files[5]]["label_1"] == ""


@pytest.mark.slow
def test_folders_globs_and_jsonl(padded, tmp_path, capsys):
    a = tone(tmp_path / "data" / "a.wav", 0.3)
    b = tone(tmp_path / "data" / "sub" / "b.flac", 0.5, freq=880)
    (tmp_path / "data" / "notes.txt").write_text("not audio")
    c = tone(tmp_path / "other" / "c.wav", 0.3)
    assert expand_inputs([tmp_path / "data"]) == [a, b]
    assert expand_inputs([str(tmp_path / "other" / "*.wav")]) == [c]
    out = tmp_path / "p.jsonl"
    status = predict_main([str(tmp_path / "data"), str(tmp_path / "other" / "*.wav"),
                           "--checkpoint", str(padded), "--out", str(out), "--top_k", "3"])
    assert status == 0 and capsys.readouterr().err == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["file"] for r in rows] == [a, b, c]
    assert all(len(r["labels"]) == 3 and r["error"] is None and r["windows"] == 1
               for r in rows)
    assert rows[1]["duration_s"] == pytest.approx(0.5)


@pytest.mark.slow
def test_batched_equals_one_at_a_time(padded, tmp_path):
    files = [tone(tmp_path / f"{i}.wav", s, freq=200 + 150 * i)
             for i, s in enumerate((0.3, 2.2, 0.5, 1.1, 0.2))]
    bundle = checkpoints.load(padded)
    together = list(predict_files(files, checkpoint=bundle, top_k=8, batch_size=4))
    for f, r in zip(files, together):
        alone, = predict_files([f], checkpoint=bundle, top_k=8, batch_size=4)
        assert r.top == alone.top and r.windows == alone.windows  # bit for bit


def _noisy_tones(path: Path, samples: int, *, seed: int) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    wave = 0.2 * np.sin(2 * np.pi * (300 + 200 * seed) * t) + 0.05 * rng.normal(size=samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), 16000, subtype="FLOAT")
    return str(path)


def _cnn_bundle() -> Bundle:
    """An initialised CNN teacher (weights do not matter: both paths run the same ones)."""
    fe = FrontEnd(num_mel_bins=32, target_frames=48)
    model = CNNTeacher(num_classes=3, stages="tiny", num_mel_bins=32)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 48, 32), np.float32))["params"]
    return Bundle(model=model, params=params, frontend=fe, labels=("a", "b", "c"))


@pytest.mark.parametrize("kind", ["padded", "packed", "cnn"])
@pytest.mark.slow
def test_device_features_predict_as_host_features(kind, request, tmp_path):
    """The fbank made on the device, inside the model's program, from waveform windows
    gives the predictions of the host's fbank cut into windows: clips shorter than one
    frame, than one window, exactly one window, one hop longer, many windows."""
    bundle = _cnn_bundle() if kind == "cnn" else checkpoints.load(request.getfixturevalue(kind))
    fe = scorer(bundle, on_device=True).frontend  # the window's front-end
    one = samples_for_frames(fe.target_frames, frontend=fe)
    lengths = [fe.window_size - 1, one // 3, one, one + fe.hop_size, 7 * one + 11]
    files = [_noisy_tones(tmp_path / f"{n}.wav", n, seed=i) for i, n in enumerate(lengths)]
    files.insert(2, str(tmp_path / "missing.wav"))  # a bad file among them
    k = len(bundle.labels)
    host = list(predict_files(files, checkpoint=bundle, top_k=k, batch_size=4, on_device=False))
    device = list(predict_files(files, checkpoint=bundle, top_k=k, batch_size=4,
                                on_device=True))
    assert [r.file for r in device] == files
    assert device[2].error is not None and device[2].error == host[2].error
    for h, d in zip(host, device):
        assert len(d.windows) == len(h.windows) and d.duration == h.duration
        assert dict(d.top) == pytest.approx(dict(h.top), abs=1e-4)
        for (h0, h1, htop), (d0, d1, dtop) in zip(h.windows, d.windows):
            assert (d0, d1) == (h0, h1) and dict(dtop) == pytest.approx(dict(htop), abs=1e-4)
    assert len(device[-1].windows) > 10 and len(device[0].windows) == 1


@pytest.mark.slow
def test_predict_benchmark_runs_both_feature_paths(padded, capsys):
    predict_bench.main(["--checkpoint", str(padded), "--files", "3", "--seconds", "1",
                        "--rounds", "2", "--batch_size", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert "| host features |" in out and "| device features |" in out
    assert "device / host audio-s/s: " in out and "load average" in out
    assert "MACs per window: model " in out


# --- maps ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_maps_from_predict_and_evaluate(padded, tmp_path, capsys):
    clip = tone(tmp_path / "clip.wav", 0.4)
    assert predict_main([clip, "--checkpoint", str(padded), "--maps",
                         str(tmp_path / "maps")]) == 0
    assert "map: " in capsys.readouterr().out
    merge, kept = tmp_path / "maps" / "clip_merge.png", tmp_path / "maps" / "clip_kept.png"
    assert mpimg.imread(merge).shape[0] == 256 and kept.is_file()  # the checkpoint keeps 0.5
    # Overrides from the command line: TopK off -> no kept-patch map.
    assert predict_main([clip, "--checkpoint", str(padded), "--maps", str(tmp_path / "m2"),
                         "--keep_rate", "1.0"]) == 0
    assert sorted(p.name for p in (tmp_path / "m2").iterdir()) == ["clip_merge.png"]
    paths = write_split_maps(padded, directory=tmp_path / "ev", num_maps=3)
    assert len(paths) == 6 and all(p.is_file() for p in paths)


def test_merge_map_of_a_checkpoint_without_pruning(tmp_path, capsys):
    """predict --maps on a ToMe checkpoint that does not prune (the stored AST): the merge
    map alone."""
    work = stored_workdir("ast", tmp_path / "ast")
    clip = tone(tmp_path / "clip.wav", 0.4)
    assert predict_main([clip, "--checkpoint", str(work), "--maps", str(tmp_path / "maps")]) == 0
    assert "map: " in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["clip_merge.png"]
    assert mpimg.imread(tmp_path / "maps" / "clip_merge.png").ndim == 3


# --- an ElasticAST checkpoint everywhere -----------------------------------------------------


class _Clips:
    """A source of given waveforms (label 0), for the packed evaluation pipeline."""

    multi_label, sample_rate = False, 16000

    def __init__(self, waves, labels):
        self.waves, self.labels = waves, labels

    def __len__(self):
        return len(self.waves)

    def __getitem__(self, i):
        return {"audio": self.waves[i], "label": 0, "id": str(i)}


@pytest.mark.slow
def test_elastic_checkpoint_predict_evaluate_dump_init(packed, padded, tmp_path, capsys):
    bundle = checkpoints.load(packed)
    assert isinstance(bundle.model, ElasticAST) and bundle.step == 1
    short, long = tone(tmp_path / "short.wav", 0.35), tone(tmp_path / "long.wav", 2.0)
    # predict: a clip that fits one row is scored at its own length, alone in a row --
    # what the packed evaluation pipeline gives it.
    (s, l) = predict_files([short, long], checkpoint=packed, top_k=8)
    assert len(s.windows) == 1 and len(l.windows) > 1  # 2 s > the 64-frame position table
    config = bundle.config
    spec = dataclasses.replace(pack_spec(config.elastic, bundle.model),
                               max_slots=1)  # one clip a row
    pipe = PackedPipeline(_Clips([load_audio(short, sample_rate=16000)], bundle.labels),
                          frontend=bundle.frontend, spec=spec,
                          train=False, hops_ms=(10.0,), max_frames=64)
    batch = pipe.batch(0, 0)
    logits = np.asarray(packed_forward(bundle.model, bundle.params, batch,
                                       train=False).logits)[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert dict(s.top) == pytest.approx({bundle.labels[i]: float(probs[i])
                                         for i in range(8)}, rel=1e-4, abs=1e-6)
    assert predict_main([short, "--checkpoint", str(packed), "--maps",
                         str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "short_merge.png").is_file()
    capsys.readouterr()
    # evaluate: the hop x length table per setting, timed, plotted; and whole clips.
    rows = evaluate_checkpoint(packed, settings=[{}, {"tome_r": 0}], plot=tmp_path / "s.png",
                               echo=None)
    assert len(rows) == 8 and all(r["clips_per_s"] > 0 for r in rows)
    assert (tmp_path / "s.png").is_file()
    rows = evaluate_checkpoint(packed, hop_frames=32, echo=None)
    assert rows[0]["num_clips"] == 8 and 0 <= rows[0]["accuracy"] <= 1
    # distill dump: one row per training clip, in source order.
    teacher = dump(packed, out=tmp_path / "t.npz", echo=None)
    in_worker = dump(packed, out=tmp_path / "t1.npz", echo=None, workers=1)
    np.testing.assert_array_equal(in_worker.logits, teacher.logits)
    source = make_source(config.data.source, sample_rate=16000, **config.data.train.to_dict())
    assert teacher.ids == tuple(source_ids(source)) and teacher.labels == bundle.labels
    assert teacher_logits.load(tmp_path / "t.npz").logits.shape == (24, len(bundle.labels))
    # init_from: an ElasticAST checkpoint, and a padded AST one, into an ElasticAST.
    fresh = jax.tree.map(np.zeros_like, bundle.params)
    chex.assert_trees_all_equal(
        checkpoints.init_params(packed, bundle.model, fresh=fresh), dict(bundle.params))
    ast = checkpoints.load(padded)
    assert isinstance(ast.model, AST)
    converted = checkpoints.init_params(padded, bundle.model, fresh=fresh)
    chex.assert_trees_all_equal(converted["block_0"], ast.params["block_0"])
    with pytest.raises(ValueError, match="ElasticAST checkpoint, which cannot initialise the AST"):
        checkpoints.init_params(packed, ast.model, fresh=ast.params)


@pytest.mark.slow
def test_old_elastic_metadata_is_read(packed, tmp_path):
    """Checkpoints written before the registry carry meta "model_kind" only; those written
    before the last block stopped reducing have no "reduce_last_block" and keep reducing
    there (their ToMe r=2 in the last of 2 blocks), the meaning they were trained with."""
    from fast_ast_jax.checkpoints.store import Checkpointer

    bundle = checkpoints.load(packed)
    assert not bundle.model.reduce_last_block
    ckpt = Checkpointer(packed / "checkpoints", create=False)
    state, meta = ckpt.restore()
    ckpt.close()
    meta = {k: v for k, v in meta.items() if k != "model_class"} | {"model_kind": "elastic"}
    for name, model_meta, want in [
            ("registry", meta["model"], bundle.model),
            ("last_block", {k: v for k, v in meta["model"].items()
                            if k != "reduce_last_block"},
             bundle.model.clone(reduce_last_block=True))]:
        old = Checkpointer(tmp_path / name / "checkpoints", every=1)
        old.save(1, state, {**meta, "model": model_meta})
        old.close()
        loaded = checkpoints.load(tmp_path / name).model
        assert isinstance(loaded, ElasticAST) and loaded == want
    assert bundle.model.schedules()[0] == [2, 0] and want.schedules()[0] == [2, 2]


# --- wrong paths and flags ---------------------------------------------------------------------


@pytest.mark.slow
def test_usage_errors_one_line_exit_2(padded, packed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    typo = tmp_path / "typo" / "work"
    py = [sys.executable]
    cases = {
        "train: no config file": py + ["train.py", "--config", "configs/nope.py",
                                       "--workdir", str(typo)],
        "train: misspelt field": py + ["train.py", "--config", "configs/test.py",
                                       "--config.model.dpth=2", "--workdir", str(typo)],
        "evaluate: missing": py + ["evaluate.py", "--checkpoint", str(typo)],
        "evaluate: empty": py + ["evaluate.py", "--checkpoint", str(empty)],
        "evaluate: misspelt field": py + ["evaluate.py", "--checkpoint", str(padded),
                                          "--config", "configs/test.py",
                                          "--config.batch_sise=2"],
        "evaluate: negative workers": py + ["evaluate.py", "--checkpoint", str(padded),
                                            "--workers=-1"],
        "predict: missing": py + ["-m", "fast_ast_jax.predict", "x.wav", "--checkpoint",
                                  str(typo)],
        "predict: empty": py + ["-m", "fast_ast_jax.predict", "x.wav", "--checkpoint",
                                str(empty)],
        "distill: missing": py + ["-m", "fast_ast_jax.distill", "dump", "--checkpoint",
                                  str(typo), "--out", str(tmp_path / "t.npz")],
        "distill: no config file": py + ["-m", "fast_ast_jax.distill", "dump", "--checkpoint",
                                         str(padded), "--config", "configs/nope.py", "--out",
                                         str(tmp_path / "t.npz")],
    }
    # Matplotlib's font cache from this process: with a fresh HOME each of the processes
    # below builds its own and, past 5 s (a loaded machine), logs a line about it.
    import matplotlib.font_manager  # noqa: F401  (builds the cache here if absent)

    env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "MPLCONFIGDIR": matplotlib.get_cachedir(),
           # and the session's XLA settings and compilation cache
           **{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))}}
    # Alongside: evaluate.py on an ElasticAST checkpoint with --sweep, --plot and --maps,
    # loading in a worker process.
    works = py + ["evaluate.py", "--checkpoint", str(packed), "--sweep", "r=0,1", "--plot",
                  str(tmp_path / "sweep.png"), "--maps", str(tmp_path / "maps"),
                  "--num_maps", "1", "--workers", "1"]
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, cmd in {**cases, "works": works}.items()}
    out, err = procs.pop("works").communicate(timeout=600)
    assert "hop_ms" in out and "clips_per_s" in out, err
    assert (tmp_path / "sweep.png").is_file()
    assert (tmp_path / "maps" / "0_eval-0_merge.png").is_file()
    hints = {"train: misspelt field": 'did you mean "depth"',
             "evaluate: misspelt field": 'did you mean "batch_size"',
             "train: no config file": "configs/nope.py does not exist",
             "distill: no config file": "configs/nope.py does not exist",
             "evaluate: empty": "no checkpoint in", "predict: empty": "no checkpoint in",
             "evaluate: negative workers": "--workers=-1: -1 is not a non-negative"}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, err)
        assert lines[0].startswith("error: ") and hints.get(name, "does not exist") in lines[0]
    assert not (tmp_path / "typo").exists() and list(empty.iterdir()) == []
    assert not (tmp_path / "t.npz").exists()


# --- imports ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_import_cycles_and_format_without_training_code():
    modules = ["fast_ast_jax.train.evaluation", "fast_ast_jax.train.loop",
               "fast_ast_jax.train.elastic", "fast_ast_jax.train.task",
               "fast_ast_jax.train.forward", "fast_ast_jax.checkpoints", "fast_ast_jax.predict",
               "fast_ast_jax.train.dump", "fast_ast_jax.maps", "fast_ast_jax.windows",
               "fast_ast_jax.export", "fast_ast_jax.inference", "fast_ast_jax.embeddings",
               "fast_ast_jax.embed", "fast_ast_jax.exported", "fast_ast_jax.result_files",
               "fast_ast_jax.file_commands", "fast_ast_jax.distill"]
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.startswith('fast_ast_jax')]:\n"
            "        del sys.modules[k]\n"
            "    importlib.import_module(m)\n"
            "for k in [k for k in sys.modules if k.startswith('fast_ast_jax')]:\n"
            "    del sys.modules[k]\n"
            "import fast_ast_jax.teacher_logits, fast_ast_jax.cli\n"
            "print(sorted(k for k in sys.modules if k.startswith('fast_ast_jax.train')))")
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, text=True,
                         capture_output=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # the teacher-logits format and cli import no training
    # No function-level imports of the package (they hid the cycles) in these modules.
    import ast as pyast

    for name in modules + ["fast_ast_jax.teacher_logits", "fast_ast_jax.cli",
                           "fast_ast_jax.bundle"]:
        path = ROOT / (name.replace(".", "/") + ".py")
        path = path if path.is_file() else path.with_suffix("") / "__init__.py"
        for node in pyast.walk(pyast.parse(path.read_text())):
            if isinstance(node, (pyast.FunctionDef, pyast.AsyncFunctionDef)):
                for inner in pyast.walk(node):
                    if isinstance(inner, pyast.ImportFrom) and (inner.module or "").startswith(
                            "fast_ast_jax"):
                        pytest.fail(f"{path.name}:{inner.lineno} imports {inner.module} "
                                    f"inside {node.name}()")
