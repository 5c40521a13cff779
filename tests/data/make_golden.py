"""The stored checkpoints of tests/test_golden.py, and what the code of their day gave.

    PYTHONPATH=. python tests/data/make_golden.py     # run ONCE, on a release (see below)

What it writes, in tests/data/golden/:
    audio/*.wav, meta.csv   generated clips (three tone classes, 8 kHz; folds train / eval /
                            probe) - files, so the test needs no generator that may change;
    <kind>/checkpoints/     the workdir of a short training of each kind (KINDS: an AST with
                            ToMe, SpecAugment, mixup and dropout, its last two checkpoints; an
                            ElasticAST on packed rows and a masked-pretraining encoder-decoder,
                            the last checkpoint);
    <kind>.npz              what that code gave for it (`outputs` and `resumed`): logits on a
                            stored input, predict / embed outputs of the eval and probe clips,
                            evaluate.py's table, and the losses, final evaluation and params
                            after resuming the run for RESUME_STEPS more steps;
    made.json               the commit, date and versions that made them.

Why once: tests/test_golden.py loads these files with whatever code it runs on and asserts
that it predicts, evaluates and resumes (same data order, same losses, same params) exactly
as the code that wrote them did - the proof that a refactor of train/, data/, models/ or the
commands changed no behaviour, and that checkpoints users already have still load and resume.
Regenerating the files with changed code makes that test pass by construction and so proves
nothing. Regenerate only for a change of behaviour that is intended (a bug fix, a new
default), say so in the commit, and run it on the commit that makes that change alone.

Everything runs on the CPU, one device, fixed seeds, XLA optimisations on (as users run):
the test runs under the same settings.
"""
from __future__ import annotations

import csv
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
KINDS = ("ast", "elastic", "mae")
STEPS = 6  # the stored run: checkpoints at steps 3 and 6
RESUME_STEPS = 3  # the test resumes to STEPS + RESUME_STEPS (into the next epoch)
LABELS = {"low": 330.0, "mid": 660.0, "high": 1320.0}  # tone class -> fundamental (Hz)
SR = 8000  # the clips' rate; the front-end resamples to 16 kHz on load


def clip_rows() -> list[tuple[str, str, str, float]]:
    """(filename, label, fold, seconds): 16 train and 8 eval clips of 0.15-0.35 s, and two
    probe clips for predict only (0.9 s: several windows; 0.12 s: padded)."""
    rng = np.random.default_rng(2026)
    rows = []
    names = list(LABELS)
    for fold, n in (("train", 16), ("eval", 8)):
        for i in range(n):
            rows.append((f"{fold}{i:02d}.wav", names[i % 3], fold,
                         round(float(rng.uniform(0.15, 0.35)), 3)))
    rows += [("probe_long.wav", "mid", "probe", 0.9), ("probe_short.wav", "high", "probe", 0.12)]
    return rows


def write_audio(root: Path) -> None:
    """The clips of `clip_rows` (16-bit WAV) and meta.csv: a harmonic tone of the label's
    pitch, a random onset and level, and noise, so classes overlap but are learnable."""
    rng = np.random.default_rng(7)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = clip_rows()
    for name, label, _, seconds in rows:
        t = np.arange(int(SR * seconds)) / SR
        f0 = LABELS[label] * rng.uniform(0.9, 1.1)
        tone = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
                   for k in (1, 2, 3))
        wave = rng.uniform(0.1, 0.4) * tone + 0.05 * rng.standard_normal(t.size)
        sf.write(root / "audio" / name, np.clip(wave, -1, 1), SR, subtype="PCM_16")
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("filename", "label", "fold"))
        w.writerows(r[:3] for r in rows)


def files(root: Path) -> list[str]:
    """The clips that predict / embed score: eval and probe, in CSV order."""
    return [str(root / "audio" / r[0]) for r in clip_rows() if r[2] != "train"]


def make_config(kind: str, *, num_steps: int = STEPS):
    """The run of `kind`: data paths relative to the golden directory (the test runs there),
    so the checkpoint's stored config names no absolute path."""
    from fast_ast_jax.train.config import default_config
    from fast_ast_jax.train.elastic import elastic_defaults

    c = default_config()
    c.update(batch_size=8, num_steps=num_steps, log_every=1, checkpoint_every=3,
             keep_checkpoints=2, eval_batch_size=8, seed=3)
    c.frontend.update(num_mel_bins=16, target_frames=32)
    c.data.source = "folder"
    split = {"csv_path": "meta.csv", "audio_dir": "audio"}
    c.data.train = {**split, "select": {"fold": "train"}}
    c.data.eval = {**split, "select": {"fold": "eval"}}
    c.model.update(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=(8, 8), fstride=8,
                   tstride=8)  # 2 x 4 patches: small files
    c.optim.lr = 3e-3
    if kind == "ast":
        c.model.update(tome_r=1, dropout=0.1)
        c.augment.update(freqm=4, timem=8, mixup=0.5)
    elif kind == "elastic":
        c.keep_checkpoints = 1  # files kept small: the AST's two show keep and fallback
        c.model.update(name="elastic", tome_r=1)
        c.elastic = elastic_defaults()
        c.elastic.update(rows=2, max_tokens=32, max_slots=8, hops_ms=(10.0, 20.0),
                         max_frames=64, token_dropout=0.1, eval_hops_ms=(10.0, 20.0),
                         eval_max_frames=(64,))
    elif kind == "mae":
        c.keep_checkpoints = 1
        c.model.update(name="mae", depth=1, mask_ratio=0.5, decoder_width=8, decoder_depth=1,
                       decoder_heads=2)
    else:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    return c


def probe_input(kind: str) -> np.ndarray:
    """A fixed (2, 32, 16) fbank-shaped input for the model's own forward."""
    return np.random.default_rng(11).standard_normal((2, 32, 16)).astype(np.float32)


def flat_params(params) -> dict[str, np.ndarray]:
    """{"params/<path>": array} of a params tree."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"params/" + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in leaves}


def outputs(kind: str, workdir: Path, root: Path) -> dict[str, np.ndarray]:
    """What the checkpoint in `workdir` gives: its step, the model's own forward (jitted:
    a new program, whatever ran before) on `probe_input`, and predict (classifiers) / embed (mae) on `files`, evaluate.py's table
    (classifiers); `root` holds the clips."""
    import jax
    import jax.numpy as jnp

    from fast_ast_jax import checkpoints, embed, predict
    from fast_ast_jax.train.evaluation import evaluate_checkpoint

    bundle = checkpoints.load(workdir)
    out = {"step": np.asarray(bundle.step)}
    x = jnp.asarray(probe_input(kind))
    if kind == "mae":
        enc, params = embed.encoder(bundle, where=str(workdir))
        out["forward"] = np.asarray(jax.jit(enc.apply)({"params": params}, x))
        results = list(embed.embed_files(files(root), checkpoint=bundle, workers=1))
        out["embed"] = np.stack([r.clip.scores for r in results])
        return out
    if kind == "ast":
        out["forward"] = np.asarray(jax.jit(bundle.model.apply)({"params": bundle.params}, x))
    results = list(predict.predict_files(files(root), checkpoint=bundle,
                                         top_k=len(bundle.labels), workers=1))
    assert all(r.error is None for r in results), [r.error for r in results]
    out["labels"] = np.asarray(bundle.labels)
    # (files, labels) in the checkpoint's label order: ties cannot reorder it
    out["predict_scores"] = np.asarray([[dict(r.top)[label] for label in bundle.labels]
                                        for r in results])
    out["predict_windows"] = np.asarray([len(r.windows) for r in results])
    rows = evaluate_checkpoint(workdir, echo=None)
    out["evaluate_accuracy"] = np.asarray([r["accuracy"] for r in rows])
    if "macs" in rows[0]:
        out["evaluate_macs"] = np.asarray([r["macs"] for r in rows])
    return out


def losses(workdir: Path) -> dict[int, float]:
    """{step: train/loss} of metrics.jsonl."""
    lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {int(d["step"]): float(d["train/loss"]) for d in lines if "train/loss" in d}


def resumed(kind: str, workdir: Path) -> dict[str, np.ndarray]:
    """Resume the run in `workdir` (a copy: it is extended) for RESUME_STEPS more steps:
    its per-step losses, final evaluation and params."""
    from fast_ast_jax.train import loop

    final = loop.train_and_evaluate(make_config(kind, num_steps=STEPS + RESUME_STEPS),
                                    str(workdir))
    new = losses(workdir)
    steps = range(STEPS + 1, STEPS + RESUME_STEPS + 1)
    out = {"resume_losses": np.asarray([new[s] for s in steps]),
           "resume_eval": np.asarray(final["eval_loss" if kind == "mae" else "eval_accuracy"]),
           **flat_params(final["state"].params)}
    return out


def main() -> None:
    import jax

    jax.config.update("jax_platforms", "cpu")
    import os

    os.chdir(GOLDEN.parent)
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    write_audio(GOLDEN)
    os.chdir(GOLDEN)  # the configs' relative data paths
    from fast_ast_jax.train import loop

    for kind in KINDS:
        work = GOLDEN / kind
        final = loop.train_and_evaluate(make_config(kind), str(work))
        out = {"train_losses": np.asarray([losses(work)[s] for s in range(1, STEPS + 1)]),
               "train_eval": np.asarray(final["eval_loss" if kind == "mae"
                                              else "eval_accuracy"])}
        for extra in work.iterdir():  # keep the checkpoints only (metrics: in the npz)
            if extra.name != "checkpoints":
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        for marker in work.rglob("commit_success.txt"):  # orbax writes the absolute path
            marker.write_text(marker.read_text().replace(f"{GOLDEN}/", ""))
        out.update(outputs(kind, work, GOLDEN))
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / kind
            shutil.copytree(work, copy)
            out.update(resumed(kind, copy))
        np.savez_compressed(GOLDEN / f"{kind}.npz", **out)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    made = {"commit": commit, "date": datetime.date.today().isoformat(),
            "python": sys.version.split()[0], "jax": jax.__version__,
            "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else ""}
    (GOLDEN / "made.json").write_text(json.dumps(made, indent=1) + "\n")


if __name__ == "__main__":
    main()
