"""Checkpoints (orbax CheckpointManager): train state + JSON metadata.

Each step directory holds two items:
    state: TrainState (params, opt_state, step, rng), restored with its shardings;
    meta:  {"data_position": [epoch, index_in_epoch], "model": model fields,
            "model_class": "ast" | "cnn" (absent in older checkpoints: "ast"),
            "frontend": FrontEnd.to_dict(), "labels": [...], "loss": "softmax"|"sigmoid",
            "config": the run's config} — everything inference and resumption need.

Robustness: orbax writes a step into a temporary directory and renames it when complete,
so a save killed half-way (kill -9, power loss) never shows up as a step. A step directory
that is there but unreadable (files missing or corrupt) is skipped by `restore(...,
fallback=True)` with a warning naming it, and the next older step is used; a checkpoint
whose arrays do not fit the model (another model size) is a `CheckpointMismatchError`
naming the parameter and both shapes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fast_ast_jax.models import name_from_meta


def _tuples(value):
    """JSON lists -> tuples (flax module fields must be hashable), recursively."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit the model (another size or config)."""


def _key(path) -> str:
    """A tree path as "params/block_0/attn/qkv/kernel", whatever the containers (dicts,
    dataclasses, named tuples: orbax metadata holds dicts where the state has objects)."""
    names = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    return "/".join(str(n) for n in names)


def check_shapes(saved, target, *, where: str, exact: bool = False) -> None:
    """Raise CheckpointMismatchError for the first leaf whose shape differs (or is missing);
    with `exact`, also for leaves of `saved` that `target` lacks (a deeper or otherwise
    larger model's checkpoint, which would otherwise load in part without a word).

    saved, target: pytrees (nested dicts) of anything with .shape.
    """
    flat_saved = {_key(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    if exact:
        wanted = {_key(k) for k, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
        extra = sorted(set(flat_saved) - wanted)
        if extra:
            raise CheckpointMismatchError(
                f"{where} has {len(extra)} parameter(s) the model lacks, e.g. {extra[0]}; it "
                "was saved by a larger model (more blocks?): use the model config it was "
                "trained with")
    for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
        key = _key(path)
        if key not in flat_saved:
            raise CheckpointMismatchError(
                f"{where} has no {key} (the model needs shape {tuple(leaf.shape)}); it was "
                "saved by a different model: use the model config it was trained with")
        got = tuple(getattr(flat_saved[key], "shape", ()))
        if got != tuple(leaf.shape):
            raise CheckpointMismatchError(
                f"{where}: {key} has shape {got} but the model needs {tuple(leaf.shape)}; "
                "it was saved by a different model size/config: use that config, or a new "
                "workdir")


def _schedule_string(tome_r):
    """A ToMe schedule saved as a JSON list by older versions -> today's tagged string
    (models.tome.parse_schedule), with the meaning it had then: two values were ToMe's
    (r, inflection), any other count one r per block."""
    if not isinstance(tome_r, list):
        return tome_r
    if len(tome_r) == 2:
        return f"ramp:{int(tome_r[0])},{float(tome_r[1])}"
    return "blocks:" + ",".join(str(int(r)) for r in tome_r)


def model_fields_from_meta(meta: dict) -> dict[str, Any]:
    """The model's constructor fields from a checkpoint's metadata, with the meaning they
    had when saved: list ToMe schedules (`_schedule_string`); an ElasticAST saved before
    the last block stopped reducing (no "reduce_last_block" field) keeps reducing there.
    (An AST's last-block reduction never changed its logits, so its AST needs no field.)"""
    fields = dict(meta["model"])
    if "tome_r" in fields:
        fields["tome_r"] = _schedule_string(fields["tome_r"])
    if name_from_meta(meta) == "elastic":
        fields.setdefault("reduce_last_block", True)
    return {k: _tuples(v) for k, v in fields.items()}


class Checkpointer:
    """Periodic saves every `every` steps, keeping the latest `keep`."""

    def __init__(self, directory: str | os.PathLike, *, every: int = 1000, keep: int = 2,
                 create: bool = True):
        self.directory = Path(directory).absolute()
        self.every = every
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
        """Save if `step` is a multiple of `every` (or `force`); returns whether it saved."""
        if not force and (self.every <= 0 or step % self.every):
            return False
        if step in self._mgr.all_steps():
            return False
        return self._mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int | None = None, *, target=None, fallback: bool = False,
                check_meta=None) -> tuple[Any, dict]:
        """(state, meta) of `step` (default latest). `target`: abstract state with
        shardings (jax.ShapeDtypeStruct leaves); None restores the saved tree (as nested
        dicts) replicated over this process's devices, whatever topology saved it.

        fallback (only with step=None): an unreadable latest step is skipped with a warning
        naming its directory, and older steps are tried; `self.restored_step` says which
        step was used and `self.unreadable` lists the skipped ones.
        check_meta: called with the step's metadata before its state is read; what it
            raises (e.g. "another model config") propagates, it is not "unreadable".
        Raises CheckpointError (unreadable) or CheckpointMismatchError (wrong shapes).
        """
        if step is None:
            steps = sorted(self._mgr.all_steps(), reverse=True)
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            if not fallback:
                steps = steps[:1]
        else:
            steps = [step]
        self.unreadable: list[int] = []
        for i, s in enumerate(steps):
            try:
                out = self._restore_step(s, target, check_meta)
            except CheckpointError as e:
                if i + 1 == len(steps):
                    raise
                print(f"warning: {e}; falling back to step {steps[i + 1]}", file=sys.stderr)
                self.unreadable.append(s)
                continue
            self.restored_step = s
            return out
        raise AssertionError("unreachable")

    def _restore_step(self, step: int, target, check_meta) -> tuple[Any, dict]:
        where = f"checkpoint {self.directory / str(step)}"
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
            if meta is None:
                raise ValueError("no meta")
        except Exception as e:
            raise CheckpointError(f"{where} is unreadable ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e
        if check_meta is not None:
            check_meta(meta)
        try:
            saved = self._mgr.item_metadata(step)["state"]
        except Exception as e:  # orbax raises many types for missing / corrupt files
            raise CheckpointError(f"{where} is unreadable ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e
        if saved is None:
            raise CheckpointError(f"{where} is unreadable (no state metadata)")
        if target is None:
            replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("d",)), P())
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), saved)
        else:
            check_shapes(saved, target, where=where)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"{where} is unreadable ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e
        if out.meta is None:
            raise CheckpointError(f"{where} is unreadable (no meta)")
        return out.state, out.meta

    def quarantine(self, steps: list[int]) -> None:
        """Rename unreadable step directories to `<step>.unreadable` (process 0), so a
        resumed run can save that step again; orbax no longer lists them."""
        if steps and jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst = src.with_name(f"{s}.unreadable")
                if dst.exists():
                    import shutil

                    shutil.rmtree(dst)
                src.rename(dst)
        if steps:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("checkpoint quarantine")
            self._mgr.reload()

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
