"""python -m fast_ast_jax.recipe: the small-data recipe as one command, on generated audio
(tests.helpers.write_folder: chirps whose pitch depends on the label).

Fast: the input checks (one `error:` line, exit 2, nothing written), the split, the input
length, the overrides, the student's r, the different-recipe refusal. Slow: the whole
command on a tiny model (every stage, the table, the export), a second run that trains
nothing, and an interrupted stage resumed by the same command.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from fast_ast_jax import bench
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.recipe import __main__ as command
from fast_ast_jax.recipe import results as results_lib
from fast_ast_jax.recipe import workdir as workdir_lib
from fast_ast_jax.recipe.clips import read_clips, target_frames, write_clips
from fast_ast_jax.recipe.configs import STUDENT_MAC_RATIO, stage_configs
from fast_ast_jax.recipe.run import plan
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import build_model
from tests.helpers import sigint_at_batch, write_folder

pytestmark = pytest.mark.usefixtures("fast_compile")

# A tiny model and 2-step stages (the recipe's own sizes are for real data).
TINY = ["model.width=32", "model.num_heads=2", "model.mlp_dim=64", "model.depth=2",
        "frontend.num_mel_bins=32", "batch_size=4", "eval_batch_size=8", "num_steps=2",
        "checkpoint_every=1", "log_every=1", "pretrain.model.decoder_width=16",
        "pretrain.model.decoder_heads=2", "pretrain.model.decoder_depth=1",
        "student.model.tome_r=1"]


def _data(tmp_path, n=24, labels="abc", header=("filename", "label", "fold")) -> Path:
    rows = [(f"{i}.wav", labels[i % len(labels)], "test" if i % 4 == 0 else "train")
            for i in range(n)]
    return write_folder(tmp_path / "data", rows, header=header)


def _args(meta: Path, work: Path, *extra, tiny=True) -> list[str]:
    """The command's arguments: TINY's overrides first, so that `extra` overrides them."""
    args = ["--data", str(meta), "--audio_dir", str(meta.parent / "audio"),
            "--workdir", str(work)]
    for item in TINY if tiny else ():
        if "--no_student" not in extra or not item.startswith("student."):
            args += ["--set", item]
    return args + list(extra)


def _fails(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        command.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def _snapshot(path: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in path.rglob("*")} if path.exists() else {}


@pytest.mark.parametrize("case, expected", [
    ("no_csv", "no such file"),
    ("unreadable", "cannot read"),
    ("no_label_column", "no column 'label'"),
    ("eval_selects_nothing", "selects no row"),
    ("eval_unknown_column", "no column 'speaker'"),
    ("one_class", "at least 2 classes"),
    ("missing_audio", "missing"),
    ("too_few_clips", "fewer than one batch of 32"),
    ("bad_override", "no config field 'model.widht'"),
    ("no_unlabeled_folder", "--unlabeled"),
    ("set_without_value", "give [STAGE.]FIELD=VALUE"),
    ("set_stage_only", "name a config field after the stage"),
    ("force_a_stage_that_does_not_run", "--force 'student': use one of"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, expected):
    meta = _data(tmp_path)
    work = tmp_path / "work"
    extra, tiny = ["--eval", "fold=test"], True
    if case == "no_csv":
        meta = tmp_path / "nothing.csv"
    elif case == "unreadable":
        meta = tmp_path / "data" / "binary.csv"
        meta.write_bytes(b"\xff\xfe\x00\x81" * 20)
    elif case == "no_label_column":
        meta = _data(tmp_path / "x", header=("filename", "class", "fold"))
    elif case == "eval_selects_nothing":
        extra = ["--eval", "fold=validation"]
    elif case == "eval_unknown_column":
        extra = ["--eval", "speaker=theo"]
    elif case == "one_class":
        meta = _data(tmp_path / "x", labels="a")
    elif case == "missing_audio":
        (meta.parent / "audio" / "5.wav").unlink()
    elif case == "too_few_clips":
        tiny = False  # the recipe's batch of 32 > 18 training clips
    elif case == "bad_override":
        extra += ["--set", "model.widht=64"]
    elif case == "no_unlabeled_folder":
        extra += ["--unlabeled", str(tmp_path / "nowhere")]
    elif case == "set_without_value":
        extra += ["--set", "model.depth"]
    elif case == "set_stage_only":
        extra += ["--set", "finetune=3"]
    elif case == "force_a_stage_that_does_not_run":
        extra += ["--no_student", "--force", "student"]
    err = _fails(capsys, _args(meta, work, *extra, tiny=tiny))
    assert expected in err
    assert not work.exists()


def test_holdout_is_stratified_seeded_and_never_pretrained_on(tmp_path):
    meta = _data(tmp_path, n=40)
    unlabeled = tmp_path / "more"
    write_folder(unlabeled, [(f"u{i}.wav", "a", "x") for i in range(3)])
    (unlabeled / "audio" / "same.wav").symlink_to(meta.parent / "audio" / "0.wav")
    clips = read_clips(meta, audio_dir=meta.parent / "audio", holdout=0.25,
                       unlabeled=(unlabeled,))
    again = read_clips(meta, audio_dir=meta.parent / "audio", holdout=0.25,
                       unlabeled=(unlabeled,))
    assert clips == again and clips.split == "holdout 0.25 (seed 0)"
    for label in "abc":  # a quarter of each label (14, 13, 13 clips)
        split = [s for _, name, s in clips.labeled if name == label]
        assert split.count("eval") == round(0.25 * len(split))
    # the labeled clip reached through the unlabeled folder is not pretrained on again
    assert sorted(clips.unlabeled) == [f"unlabeled1/audio/u{i}.wav" for i in range(3)]
    write_clips(clips, tmp_path / "w" / "data")
    with open(tmp_path / "w" / "data" / "pretrain.csv") as f:
        pretrain = [r["filename"] for r in csv.DictReader(f)]
    assert not set(pretrain) & set(clips.names("eval"))
    assert set(clips.names("train")) <= set(pretrain)
    assert all((tmp_path / "w" / "data" / name).is_file() for name in pretrain)


def test_input_length_is_the_99th_percentile_in_whole_patches():
    frames = np.arange(1, 101)  # 99th percentile 99.01
    assert target_frames(frames) == 112
    assert target_frames(np.full(10, 3)) == 16  # at least one patch
    assert target_frames(np.full(10, 5000)) == 1024  # at most AST's 10 s


def test_stage_configs_follow_the_data_and_the_overrides(tmp_path):
    meta = _data(tmp_path)
    clips = read_clips(meta, audio_dir=meta.parent / "audio", eval_select="fold=test")
    configs = stage_configs(clips, workdir="W", target_frames=96, seed=3,
                            overrides=["finetune.num_epochs=2", "model.depth=4",
                                       "batch_size=6"])
    pre, ft, st = configs.values()
    assert (pre.model.name, ft.model.name, st.model.name) == ("mae", "ast", "ast")
    assert all(c.model.depth == 4 and c.seed == 3 and c.frontend.target_frames == 96
               for c in configs.values())
    assert ft.num_steps == 2 * (18 // 6) and pre.num_steps == 100 * (18 // 6)
    assert ft.init_from == "W/pretrain" and st.init_from == "W/finetune"
    assert pre.data.train.csv_path == "W/data/pretrain.csv"
    # the student's r: the smallest that needs STUDENT_MAC_RATIO x fewer MACs
    model = build_model(read_config(st).model, num_classes=3)
    ratio = lambda r: (bench.ast_macs(model.clone(tome_r=0)).total
                       / bench.ast_macs(model.clone(tome_r=r)).total)
    r = st.model.tome_r
    assert ratio(r) >= STUDENT_MAC_RATIO > ratio(r - 1)
    init = stage_configs(clips, workdir="W", target_frames=96, student_init="pretrain",
                         overrides=["batch_size=6"])
    assert init["student"].init_from == "W/pretrain"
    assert init["student"].num_epochs == init["finetune"].num_epochs


def test_a_stage_of_another_recipe_is_refused_and_force_allows_it(tmp_path, capsys):
    meta = _data(tmp_path)
    work = tmp_path / "work"
    args = _args(meta, work, "--eval", "fold=test")
    p = plan(data=meta, workdir=work, audio_dir=meta.parent / "audio",
             eval_select="fold=test", overrides=TINY)
    work.mkdir()  # as a first run leaves it: the record, a finetune checkpoint
    workdir_lib.write_record(work, {"stages": p["stages"]})
    (work / "finetune" / "checkpoints" / "2").mkdir(parents=True)
    before = (work / "recipe.json").read_text(), _snapshot(work)
    err = _fails(capsys, args + ["--set", "finetune.optim.lr=0.01"])
    assert str(work / "finetune") in err and "optim.lr: 0.001 recorded, 0.01 now" in err
    assert "--force finetune" in err
    err = _fails(capsys, args + ["--set", "model.depth=3"])  # the first stage that differs
    assert str(work / "pretrain") not in err and str(work / "finetune") in err
    err = _fails(capsys, args + ["--set", "pretrain.optim.lr=0.01"])  # a stage before it
    assert f"{work / 'finetune'} was trained from a pretrain stage that differs now" in err
    assert ((work / "recipe.json").read_text(), _snapshot(work)) == before
    # a record written before a config field existed: the field's default is no change
    older = json.loads(before[0])
    del older["stages"]["finetune"]["config"]["model"]["tome_prop_attn"]  # simulated
    workdir_lib.write_record(work, older)
    plan(data=meta, workdir=work, audio_dir=meta.parent / "audio", eval_select="fold=test",
         overrides=TINY)
    err = _fails(capsys, args + ["--set", "model.tome_prop_attn=False"])
    assert "tome_prop_attn: None recorded, False now" in err
    plan(data=meta, workdir=work, audio_dir=meta.parent / "audio", eval_select="fold=test",
         overrides=[*TINY, "finetune.optim.lr=0.01"], force="finetune")  # no error
    (work / "recipe.json").unlink()
    err = _fails(capsys, args)
    assert "does not record" in err and str(work / "finetune") in err


def test_record_differences_name_changed_fields_only():
    old = {"config": {"seed": 0, "optim": {"lr": 1e-3}, "gone": 1}, "data": {"train": 18}}
    new = {"config": {"seed": 0, "optim": {"lr": 1e-2}, "batch_size": 32},
           "data": {"train": 18}}
    # batch_size: absent from the record, at its default now (a field added since): no
    # change; a recorded field the config no longer has ("gone") is none either
    assert workdir_lib.differences(old, new) == ["optim.lr: 0.001 recorded, 0.01 now"]
    new["config"]["batch_size"] = 8  # absent from the record, not at its default
    assert workdir_lib.differences(old, new) == [
        "batch_size: None recorded, 8 now", "optim.lr: 0.001 recorded, 0.01 now"]
    assert workdir_lib.differences(new, new) == []


def test_the_result_table_says_what_was_measured_and_under_which_load(tmp_path):
    at = {"step": 2, "checkpoint": "W/x"}
    results = {"rows": [
        {"stage": "pretrain", "what": "p", "loss": 0.21094, **at},
        {"stage": "finetune", "what": "f", "accuracy": 0.81, "macs": 1.24e8,
         "mac_ratio": 1.0, "clips_per_s": 101.4, **at},
        {"stage": "student", "what": "s", "accuracy": 0.818, "macs": 7.68e7,
         "mac_ratio": 1.24e8 / 7.68e7, "clips_per_s": 160.6, **at}],
        "load": (0.5, 0.7), "rounds": 7, "batch": 64, "wall_s": {"pretrain": 600.0}}
    text = results_lib.write_results(tmp_path, results, command="python -m x")
    lines = text.splitlines()
    assert lines[0] == "Command: `python -m x`"
    assert "| pretrain | p | loss 0.2109 | - | - | - | 2 | W/x |" in lines
    assert "| finetune | f | accuracy 0.8100 | 1.24e+08 | 1.00x | 101 | 2 | W/x |" in lines
    assert "| student | s | accuracy 0.8180 | 7.68e+07 | 1.61x | 161 | 2 | W/x |" in lines
    assert "one 64-clip eval batch" in text and "median of 7 rounds" in text
    assert "load average 0.50 at start, 0.70 at end." in text
    assert "other processes share the cores" not in text
    assert "pretrain 10.0 min" in text
    assert (tmp_path / "results.md").read_text() == text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["command"] == "python -m x" and saved["rows"][2]["accuracy"] == 0.818
    busy = results_lib.markdown({**results, "load": (0.5, 5.0)}, command="c")
    assert "other processes share the cores" in busy


def _trained(out: str) -> list[str]:
    """The stages a run's progress lines say it trained or resumed."""
    return re.findall(r"^recipe: (\w+): (?:training|resuming)", out, flags=re.M)


@pytest.mark.slow
def test_the_whole_recipe_then_a_second_run_trains_nothing(tmp_path, capsys):
    meta = _data(tmp_path)
    work = tmp_path / "work"
    args = _args(meta, work, "--eval", "fold=test", "--export")
    command.main(args)
    out = capsys.readouterr().out
    assert _trained(out) == ["pretrain", "finetune", "student"]
    results = json.loads((work / "results.json").read_text())
    rows = {r["stage"]: r for r in results["rows"]}
    assert set(rows) == {"pretrain", "finetune", "finetune + ToMe r=1", "student"}
    assert np.isfinite(rows["pretrain"]["loss"])
    for name in ("finetune", "student"):
        assert 0 <= rows[name]["accuracy"] <= 1 and rows[name]["clips_per_s"] > 0
        assert rows[name]["checkpoint"] == str(work / name) and rows[name]["step"] == 2
    assert rows["student"]["macs"] < rows["finetune"]["macs"]
    assert rows["student"]["mac_ratio"] == pytest.approx(
        rows["finetune"]["macs"] / rows["student"]["macs"])
    assert "| student |" in (work / "results.md").read_text()
    spec = json.loads((work / "export" / "model.jaxexport.json").read_text())
    assert spec["stage"] == "student" and spec["labels"] == ["a", "b", "c"]
    teacher = np.load(work / "student" / "teacher_train.npz")
    assert len(teacher["ids"]) == 18 and not list(work.glob("student/*.tmp.npz"))
    # the same command again: every stage finished, nothing trained or rewritten
    stages = {name: _snapshot(work / name) for name in ("pretrain", "finetune", "student",
                                                        "export")}
    command.main(args)
    out = capsys.readouterr().out
    assert _trained(out) == [] and out.count("skipped") == 4
    assert {name: _snapshot(work / name) for name in stages} == stages


@pytest.mark.slow
def test_an_interrupted_stage_resumes_and_a_finished_one_is_kept(tmp_path, capsys,
                                                                  monkeypatch):
    meta = _data(tmp_path)
    work = tmp_path / "work"
    args = _args(meta, work, "--eval", "fold=test", "--no_student",
                 "--set", "pretrain.num_steps=1", "--set", "finetune.num_steps=4")
    with monkeypatch.context() as m:  # Ctrl-C while the fine-tuning's 2nd batch is read
        sigint_at_batch(m, Pipeline, 1)
        with pytest.raises(SystemExit) as e:
            command.main(args)
    assert e.value.code == 1
    assert "finetune stopped at step 2 of 4" in capsys.readouterr().err
    assert workdir_lib.latest_step(work / "pretrain") == 1
    assert workdir_lib.latest_step(work / "finetune") == 2
    pretrain = _snapshot(work / "pretrain")
    command.main(args)
    out = capsys.readouterr().out
    assert "recipe: pretrain: finished (step 1 of 1" in out
    assert "recipe: finetune: resuming at step 2 of 4" in out
    assert workdir_lib.latest_step(work / "finetune") == 4
    assert _snapshot(work / "pretrain") == pretrain  # the finished stage is untouched
