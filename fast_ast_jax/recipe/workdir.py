"""The recipe's workdir W: what each stage was built from (W/recipe.json), which stages are
finished, and the refusal to continue a stage of another recipe.

A stage's record is its config with every path under W written as "{workdir}" (so a moved
workdir still matches) and the data it read (clips.Clips.summary). A stage folder holding
checkpoints whose record differs from the one the command would train now, or that was
built from an earlier stage whose record differs, is an error naming the folder and the
first differences; `--force STAGE` deletes that stage and the ones after it (they were
built from it) and trains them again. Config fields added to the trainer since a record
was written count as unchanged while they hold their defaults.
"""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

from fast_ast_jax import atomic
from fast_ast_jax.checkpoints import saved_steps
from fast_ast_jax.recipe.configs import record
from fast_ast_jax.train.config import default_config

RECORD = "recipe.json"
PLACEHOLDER = "{workdir}"


def stage_records(records: dict[str, dict], *, data: dict) -> dict[str, dict]:
    """{stage: record} from the stages' placeholder configs (configs.record), in order;
    each record holds the data summary too."""
    return {name: {"config": config, "data": data} for name, config in records.items()}


def read_record(workdir: Path) -> dict | None:
    path = workdir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); use a new --workdir, or delete it and "
                         "--force pretrain") from e


def write_record(workdir: Path, record: dict) -> None:
    with atomic.replacing(workdir / RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))


def latest_step(stage_dir: Path) -> int | None:
    """The newest checkpoint step in a stage folder (None: no checkpoint yet)."""
    return max(saved_steps(stage_dir), default=None)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return _flat({"config": record(default_config())})


def differences(old: dict, new: dict) -> list[str]:
    """'model.tome_r: 8 recorded, 7 now' per field whose value differs between two stage
    records. A field the record lacks that holds its default now (a field added to the
    config since) is no difference, nor is a recorded field the config no longer has."""
    a, b, defaults = _flat(old), _flat(new), _defaults()
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in b or (k not in a and k in defaults and b[k] == defaults[k]):
            continue
        if a.get(k) != b[k]:
            out.append(f"{k.removeprefix('config.')}: {a.get(k)!r} recorded, {b[k]!r} now")
    return out


def check_stages(workdir: Path, new: dict[str, dict], recorded: dict | None, *,
                 force: str | None) -> None:
    """Refuse (ValueError) a stage folder with checkpoints that another recipe trained: no
    record of it in W/recipe.json, a different one, or one built from an earlier stage that
    differs now. Stages from `force` on are not checked (they will be deleted)."""
    stages = list(new)
    forced = set(stages[stages.index(force):]) if force else set()
    old = (recorded or {}).get("stages", {})
    changed = None  # the first stage whose record differs (the later ones start from it)
    for name in stages:
        diff = differences(old[name], new[name]) if name in old else ["not recorded"]
        stage_dir = workdir / name
        if name not in forced and latest_step(stage_dir) is not None:
            fix = (f"use a new --workdir, or --force {name} to train it again (and the "
                   "stages after it)")
            if name not in old:
                raise ValueError(f"{stage_dir} holds checkpoints that {workdir / RECORD} "
                                 f"does not record (another recipe or a hand-made run); {fix}")
            if diff:
                more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
                raise ValueError(f"{stage_dir} was trained by a different recipe "
                                 f"({'; '.join(diff[:3])}{more}); {fix}")
            if changed:
                raise ValueError(f"{stage_dir} was trained from a {changed} stage that "
                                 f"differs now; {fix}")
        if diff and changed is None:
            changed = name


def remove_stages(workdir: Path, stages: list[str], *, force: str, echo) -> None:
    """Delete the folders of `force` and the stages after it (and W/export)."""
    for name in [*stages[stages.index(force):], "export"]:
        path = workdir / name
        if path.exists():
            echo(f"recipe: --force {force}: deleting {path}")
            shutil.rmtree(path)
