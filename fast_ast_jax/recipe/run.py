"""`run_recipe`: the small-data recipe, stage after stage, resumable.

    W/recipe.json   what each stage is built from (recipe.workdir), the data, the timings
    W/data/         the clips every stage reads (recipe.clips)
    W/cache/        features and front-end statistics, shared by the stages
    W/pretrain/     masked pretraining (a training workdir: checkpoints/, metrics.jsonl)
    W/finetune/     the AST fine-tuned from it (the teacher)
    W/student/      teacher_train.npz (the teacher's logits on the training clips) and the
                    ToMe student distilled from them
    W/export/       model.jaxexport (+ .json): the last classifier, waveform in (--export)
    W/results.md    the table of every stage (+ results.json)

Each stage is `train.loop.train_and_evaluate(config, W/<stage>)`: a stage whose newest
checkpoint is at its total steps is finished and skipped; an unfinished one resumes from its
newest checkpoint; an interrupted one (Ctrl-C, SIGTERM) saves and stops the recipe, which the
same command continues. A stage writes only into its own folder, so a failing stage leaves
the finished ones as they were. Every check of the input runs before anything is written.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.exported import export_checkpoint
from fast_ast_jax.recipe import configs as configs_lib
from fast_ast_jax.recipe import results as results_lib
from fast_ast_jax.recipe import workdir as workdir_lib
from fast_ast_jax.recipe.clips import clip_frames, read_clips, target_frames, write_clips
from fast_ast_jax.recipe.configs import TEACHER_LOGITS, stage_configs
from fast_ast_jax.train.dump import dump
from fast_ast_jax.train.loop import train_and_evaluate
from fast_ast_jax.train.spec import read_config
from fast_ast_jax.train.task import split_source, with_auto_stats

EXPORT = "export/model.jaxexport"


class StageStopped(RuntimeError):
    """A stage's training stopped before its total steps (interrupted): the same command
    resumes it."""


def _stats(config, *, workdir: Path) -> tuple[float, float]:
    """Front-end mean / std of the pretraining audio's fbank (train.task.with_auto_stats:
    computed once, kept in W/cache)."""
    config = config.copy_and_resolve_references()
    config.data.auto_stats = True
    run = read_config(config)
    frontend = with_auto_stats(run, source=split_source(run, "train"), workdir=workdir).frontend
    return float(frontend.mean), float(frontend.std)


def _train(name: str, config, *, workdir: Path, echo: Callable[[str], None]) -> float:
    """Train (or resume) one stage; returns its wall seconds. Raises StageStopped if it
    stopped early."""
    stage_dir, total = workdir / name, int(config.num_steps)
    step = workdir_lib.latest_step(stage_dir)
    echo(f"recipe: {name}: " + (f"resuming at step {step} of {total}" if step else
                               f"training {total} steps") + f" in {stage_dir}")
    start = time.perf_counter()
    final = train_and_evaluate(config, str(stage_dir))
    if final["step"] < total:
        raise StageStopped(f"{name} stopped at step {final['step']} of {total} (saved in "
                           f"{stage_dir}); run the same command again to continue it")
    return time.perf_counter() - start


def _teacher_logits(configs: dict, *, workdir: Path, echo: Callable[[str], None]) -> None:
    """The fine-tuned model's logits on the training clips, for the student (once; the file
    appears whole or not at all, teacher_logits.save, so a killed dump is redone)."""
    out = workdir / "student" / TEACHER_LOGITS
    if out.is_file():
        return
    echo(f"recipe: student: teacher logits of the training clips from {workdir / 'finetune'}")
    logits = dump(workdir / "finetune", out=out, config=configs["student"], split="train",
                  echo=None)
    echo(f"recipe: student: wrote {out} ({len(logits.ids)} clips x {len(logits.labels)} "
         "labels)")


def _export(last: str, *, workdir: Path, step: int, echo: Callable[[str], None]) -> Path:
    """W/export/model.jaxexport of the last classifier stage (once per stage and step)."""
    out = workdir / EXPORT
    spec = Path(f"{out}.json")
    made = json.loads(spec.read_text()) if spec.is_file() else {}
    if (made.get("stage"), made.get("checkpoint_step")) == (last, step):
        echo(f"recipe: export: {out} is from {last} step {step}, skipped")
        return out
    echo(f"recipe: export: {workdir / last} -> {out}")
    made = export_checkpoint(workdir / last, out)
    spec.write_text(json.dumps({**made, "stage": last}, indent=1))
    return out


def plan(*, data: str | os.PathLike, workdir: str | os.PathLike,
         audio_dir: str | os.PathLike | None = None, eval_select: str | None = None,
         holdout: float = 0.2, unlabeled: Sequence[str | os.PathLike] = (), seed: int = 0,
         student: bool = True, student_init: str = "finetune",
         overrides: Sequence[str] = (), force: str | None = None) -> dict[str, Any]:
    """Every check of the input and of the workdir, nothing written: the clips, the
    input length, the record of each stage, and the recorded W/recipe.json (or None).
    Raises ValueError / FileNotFoundError (one line each) for bad input."""
    workdir = Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is a file; give a folder (new or a recipe's)")
    clips = read_clips(data, audio_dir=audio_dir, eval_select=eval_select, holdout=holdout,
                       unlabeled=tuple(unlabeled))
    frames = target_frames(clip_frames(clips, frontend=FrontEnd()))
    kwargs = dict(target_frames=frames, seed=seed, student=student,
                  student_init=student_init, overrides=tuple(overrides))
    records = stage_configs(clips, workdir=workdir_lib.PLACEHOLDER, **kwargs)
    if force is not None and force not in records:
        raise ValueError(f"--force {force!r}: use one of {list(records)}")
    stages = workdir_lib.stage_records(
        {name: configs_lib.record(c) for name, c in records.items()}, data=clips.summary())
    recorded = workdir_lib.read_record(workdir) if workdir.is_dir() else None
    workdir_lib.check_stages(workdir, stages, recorded, force=force)
    return {"workdir": workdir, "clips": clips, "kwargs": kwargs, "stages": stages,
            "recorded": recorded, "force": force}


def run_recipe(*, export: bool = False, command: str = "", echo: Callable[[str], None] = print,
               **inputs) -> dict[str, Any]:
    """The recipe from the user's inputs (`plan`'s arguments) to the result table.

    Returns {"configs": {stage: config}, "trained": [stages trained this run],
    "results": stage_results(...), "export": path or None}.
    Raises ValueError / FileNotFoundError for bad input (nothing written), StageStopped
    when a stage was interrupted.
    """
    p = plan(**inputs)
    workdir, clips, stages = p["workdir"], p["clips"], p["stages"]
    # --- from here on, writes ---
    workdir.mkdir(parents=True, exist_ok=True)
    if p["force"]:
        workdir_lib.remove_stages(workdir, list(stages), force=p["force"], echo=echo)
    write_clips(clips, workdir / "data")
    recorded = p["recorded"] or {}
    old = recorded.get("stages", {})
    wall = {k: v for k, v in recorded.get("wall_s", {}).items()
            if k in old and k in stages and not workdir_lib.differences(old[k], stages[k])}
    record = {"version": 1, "command": command, "stages": stages, "wall_s": wall,
              "target_frames": p["kwargs"]["target_frames"]}
    workdir_lib.write_record(workdir, record)
    unpinned = stage_configs(clips, workdir=str(workdir), **p["kwargs"])
    s = clips.summary()
    echo(f"recipe: {s['train']} training clips, {s['eval']} eval clips ({s['split']}), "
         f"{s['unlabeled']} unlabeled clips, {len(s['labels'])} labels; input "
         f"{unpinned['pretrain'].frontend.target_frames} frames (derived: "
         f"{p['kwargs']['target_frames']}, the training clips' 99th percentile)")
    stats = _stats(unpinned["pretrain"], workdir=workdir)
    record["frontend_stats"] = {"mean": stats[0], "std": stats[1]}
    configs = stage_configs(clips, workdir=str(workdir), stats=stats, **p["kwargs"])
    trained = []
    for name, config in configs.items():
        step = workdir_lib.latest_step(workdir / name)
        if step is not None and step >= config.num_steps:
            echo(f"recipe: {name}: finished (step {step} of {config.num_steps} in "
                 f"{workdir / name}), skipped")
            continue
        if name == "student":
            _teacher_logits(configs, workdir=workdir, echo=echo)
        seconds = _train(name, config, workdir=workdir, echo=echo)
        wall[name] = wall.get(name, 0.0) + seconds
        workdir_lib.write_record(workdir, record)
        trained.append(name)
    last = list(configs)[-1]
    out = _export(last, workdir=workdir, step=int(configs[last].num_steps),
                  echo=echo) if export else None
    echo("recipe: evaluating every stage on the eval split")
    results = results_lib.stage_results(
        {name: (workdir / name, c) for name, c in configs.items()})
    results["wall_s"] = dict(wall)
    echo(results_lib.write_results(workdir, results, command=command))
    echo(f"recipe: results in {workdir / 'results.md'} (+ results.json)")
    return {"configs": configs, "trained": trained, "results": results, "export": out}


def command_line(argv: Sequence[str]) -> str:
    """The command as typed (recorded with the results)."""
    return shlex.join([Path(sys.executable).name, "-m", "fast_ast_jax.recipe", *argv])
