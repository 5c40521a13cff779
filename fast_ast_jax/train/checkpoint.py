"""Checkpoints (orbax CheckpointManager): train state + JSON metadata.

Each step directory holds two items:
    state: TrainState (params, opt_state, step, rng), restored with its shardings;
    meta:  {"data_position": [epoch, index_in_epoch], "model": AST fields,
            "frontend": FrontEnd.to_dict(), "labels": [...], "loss": "softmax"|"sigmoid",
            "config": the run's config} — everything inference and resumption need.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def _tuples(value):
    """JSON lists -> tuples (flax module fields must be hashable), recursively."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def model_fields_from_meta(meta: dict) -> dict[str, Any]:
    return {k: _tuples(v) for k, v in meta["model"].items()}


class Checkpointer:
    """Periodic saves every `every` steps, keeping the latest `keep`."""

    def __init__(self, directory: str | os.PathLike, *, every: int = 1000, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.every = every
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
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

    def restore(self, step: int | None = None, *, target=None) -> tuple[Any, dict]:
        """(state, meta) of `step` (default latest). `target`: abstract state with
        shardings (jax.ShapeDtypeStruct leaves); None restores the saved tree (as nested
        dicts) replicated over this process's devices, whatever topology saved it."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if target is None:
            replicated = NamedSharding(Mesh(np.asarray(jax.devices()), ("d",)), P())
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                self._mgr.item_metadata(step)["state"])
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return out.state, out.meta

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of `step` (default latest), without touching the state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self._mgr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
