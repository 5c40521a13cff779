"""Helpers shared by test modules (tests import them from here, never from each other):
configs of configs/ and shrunk runs, generated audio folders, Ctrl-C at a batch."""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fast_ast_jax.data import make_source
from fast_ast_jax.train import loop
from fast_ast_jax.train.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_folder(root: Path, rows: list[tuple[str, str, str]], *, sr: int = 8000,
                 header=("filename", "label", "fold")) -> Path:
    """Generated wavs (tones of label-dependent pitch) and a CSV describing them. A label's
    pitch is 300 Hz + 150 Hz x its rank among the rows' sorted labels: distinct labels
    sound different, the same in every process (Python's hash of a str is not)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rank = {label: i for i, label in enumerate(sorted({label for _, label, _ in rows}))}
    for name, label, _ in rows:
        f0 = 300 + 150 * rank[label]
        t = np.arange(int(sr * rng.uniform(0.2, 0.4))) / sr
        sf.write(root / "audio" / name, 0.5 * np.sin(2 * np.pi * f0 * t), sr)
    with open(root / "meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root / "meta.csv"


def stored_workdir(kind: str, dest: Path) -> Path:
    """A copy at `dest` of the stored training workdir of `kind` ("ast": an AST with ToMe in
    block 0 of 2, "elastic", "mae"; tests/data/make_golden.py): a trained checkpoint for a
    test that needs one, without training (and without writing into the repository)."""
    import shutil

    return Path(shutil.copytree(ROOT / "tests" / "data" / "golden" / kind, dest))


def load_config(name: str, arg: str | None = None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def tiny(c, *, frames=64, bins=32):
    """Shrink any config to a 1-step run of a 1-block AST."""
    c.model.update(width=64, depth=1, num_heads=2, mlp_dim=128)
    c.frontend.update(target_frames=frames, num_mel_bins=bins)
    c.update(batch_size=4, num_steps=1, eval_batch_size=4, log_every=1, checkpoint_every=1)
    return c


def run_one_step(c, tmp_path, *, expect_map=False, reevaluate=False):
    final = loop.train_and_evaluate(c, str(tmp_path / "work"))
    assert final["step"] == 1 and np.isfinite(final["train_loss"])
    # Accuracy is a count of correct clips over the eval set's clips.
    correct = final["eval_accuracy"] * final["eval_num_clips"]
    source = make_source(c.data.source, sample_rate=c.frontend.sample_rate,
                         **c.data.eval.to_dict())
    assert final["eval_num_clips"] + final["eval_bad_clips"] == len(source)
    assert correct == pytest.approx(round(correct), abs=1e-6)
    if expect_map:
        assert "eval_mAP" in final
    lines = [json.loads(s) for s in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/clips_per_s"} <= set(lines[0])
    if reevaluate:  # evaluate.py on the checkpoint reproduces the end-of-training eval
        rows = evaluate_checkpoint(tmp_path / "work", echo=None)
        assert rows[0]["accuracy"] == pytest.approx(final["eval_accuracy"])
    return final


def folder_data(tmp_path, header, rows):
    meta = write_folder(tmp_path / "data", rows, header=header)
    return {"csv_path": str(meta), "audio_dir": str(tmp_path / "data" / "audio")}


def sharded_configs() -> dict:
    """The runs of the 8-device test, also run on 1 device: padded (8 clips per step) with
    replicated and with FSDP parameters, and packed (8 rows per step) with FSDP."""
    runs = {}
    for mode in ("replicate", "fsdp"):
        c = load_config("test")
        c.update(num_steps=2, param_sharding=mode, log_every=1)
        c.data.eval = {}
        runs[f"padded_{mode}"] = c
    c = load_config("test_elastic")
    c.update(num_steps=2, param_sharding="fsdp", log_every=1)
    c.data.eval = {}
    c.data.train.num_examples = 48
    c.elastic.rows = 8
    runs["packed_fsdp"] = c
    return runs


def config(**top):
    """configs/test.py (1-block AST, 32 synthetic clips, 4 steps/epoch), no eval."""
    c = load_config("test")
    c.data.eval = {}
    c.update(log_every=1, **top)
    return c


def constant_lr(num_steps: int, **top):
    """`config` with a constant lr, so runs of different lengths share their first steps."""
    c = config(num_steps=num_steps, **top)
    c.optim.schedule = "constant"
    return c


def bad_folder(root: Path, n: int = 12) -> tuple[Path, dict[int, str]]:
    """n clips, four of them bad (zero bytes, text, NaN samples, cut header)."""
    rows = [(f"{i}.wav", "abc"[i % 3], "1") for i in range(n)]
    meta = write_folder(root, rows)
    audio = root / "audio"
    (audio / "1.wav").write_bytes(b"")
    (audio / "4.wav").write_text("not audio\n" * 50)
    sf.write(audio / "6.wav", np.full(800, np.nan, np.float32), 8000, subtype="FLOAT")
    (audio / "9.wav").write_bytes((audio / "0.wav").read_bytes()[:30])
    return meta, {1: "1.wav", 4: "4.wav", 6: "6.wav", 9: "9.wav"}


def sigint_at_batch(monkeypatch, pipeline_class, k: int):
    """Send this process SIGINT (Ctrl-C) while the k-th batch (0-based) is handed out."""
    original = pipeline_class.iterate

    def interrupted(self, **kw):
        for i, item in enumerate(original(self, **kw)):
            if i == k:
                os.kill(os.getpid(), signal.SIGINT)
            yield item

    monkeypatch.setattr(pipeline_class, "iterate", interrupted)


def packed_config(teacher: str):
    """configs/test_elastic.py with 4 rows per step, 2 steps, distillation and a 2-cell
    evaluation table."""
    c = load_config("test_elastic")
    c.update(num_steps=2, log_every=1, checkpoint_every=2)
    c.elastic.update(rows=4, eval_hops_ms=(10.0, 20.0), eval_max_frames=(64,))
    c.distill.update(teacher_logits=teacher, lam=0.5, tau=2.0)
    return c
