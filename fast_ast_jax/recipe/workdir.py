"""The recipe's workdir W: what each stage was built from (W/recipe.json), which stages are
finished, and the refusal to continue a stage of another recipe.

A stage's record is its config with every path under W written as "{workdir}" (so a moved
workdir still matches), the data it read (clips.Clips.summary) and the record of the stage
it starts from (a change upstream changes every stage after it). A stage folder holding
checkpoints whose record differs from the one the command would train now is an error
naming the folder and the first differences; `--force STAGE` deletes that stage and the
ones after it (they were built from it) and trains them again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from fast_ast_jax.checkpoints import checkpoint_dir

RECORD = "recipe.json"
PLACEHOLDER = "{workdir}"


def stage_records(records: dict[str, dict], *, data: dict) -> dict[str, dict]:
    """{stage: record} from the stages' placeholder configs (configs.record), in order;
    each record holds the data summary and the previous stage's record digest."""
    out, previous = {}, None
    for name, config in records.items():
        out[name] = {"config": config, "data": data, "after": previous}
        previous = hashlib.sha1(json.dumps(out[name], sort_keys=True).encode()).hexdigest()
    return out


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
    path = workdir / RECORD
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


def latest_step(stage_dir: Path) -> int | None:
    """The newest checkpoint step in a stage folder (None: no checkpoint yet)."""
    path = checkpoint_dir(stage_dir)
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()] \
        if path.is_dir() else []
    return max(steps, default=None)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differences(old: dict, new: dict, *, limit: int = 3) -> str:
    """'model.tome_r: 8 recorded, 7 now; ...' for the first `limit` differing fields."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    parts = []
    for k in keys[:limit]:
        if k == "after":
            parts.append("the stage before it changed")
        else:
            parts.append(f"{k.removeprefix('config.')}: {a.get(k)!r} recorded, "
                         f"{b.get(k)!r} now")
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(parts) + more


def check_stages(workdir: Path, new: dict[str, dict], recorded: dict | None, *,
                 force: str | None) -> None:
    """Refuse (ValueError) a stage folder with checkpoints that another recipe trained:
    no record of it in W/recipe.json, or a different one. Stages from `force` on are not
    checked (they will be deleted)."""
    stages = list(new)
    forced = set(stages[stages.index(force):]) if force else set()
    old = (recorded or {}).get("stages", {})
    for name in stages:
        stage_dir = workdir / name
        if name in forced or latest_step(stage_dir) is None:
            continue
        fix = (f"use a new --workdir, or --force {name} to train it again (and the stages "
               "after it)")
        if name not in old:
            raise ValueError(f"{stage_dir} holds checkpoints that {workdir / RECORD} does not "
                             f"record (another recipe or a hand-made run); {fix}")
        if old[name] != new[name]:
            raise ValueError(f"{stage_dir} was trained by a different recipe "
                             f"({differences(old[name], new[name])}); {fix}")


def remove_stages(workdir: Path, stages: list[str], *, force: str, echo) -> None:
    """Delete the folders of `force` and the stages after it (and W/export)."""
    for name in [*stages[stages.index(force):], "export"]:
        path = workdir / name
        if path.exists():
            echo(f"recipe: --force {force}: deleting {path}")
            shutil.rmtree(path)
