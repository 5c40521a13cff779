"""Per-clip outputs of a model on a batch, for padded and packed models alike, and the one
evaluation over a pipeline built on them.

A padded batch (data.pipeline) holds one clip per row; a packed batch (data.packed) holds
several clips per row in slots. `Kind.forward` flattens either into per-clip arrays, so
losses, metrics and evaluation are written once:

    Clips.logits (N, C) float32, targets (N, C), mask (N,) (1 = a real clip), teacher_probs
    (N, C) or None; N = B for padded batches and R * S (rows x slots) for packed ones.

A model whose objective is "reconstruct" (models.objective: masked pretraining, padded
batches) has no logits: its per-clip output is the reconstruction loss
(`reconstruction_loss`, `Reconstruction`), and evaluation reports its mean.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import flax.struct
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from fast_ast_jax import bench, models, sharding
from fast_ast_jax.audio.augment_jax import device_batch
from fast_ast_jax.models.elastic import check_positions
from fast_ast_jax.train import metrics as metrics_lib

# The model input of a packed batch (the other keys are targets, masks, teacher predictions).
PACKED_INPUTS = ("patches", "segment_ids", "positions", "slot_index")


@flax.struct.dataclass
class Clips:
    logits: jax.Array  # (N, C) float32
    targets: jax.Array  # (N, C)
    mask: jax.Array  # (N,)
    teacher_probs: jax.Array | None  # (N, C) teacher predictions (data.clips.teacher_probs)


@flax.struct.dataclass
class Reconstruction:
    loss: jax.Array  # (N,) per-clip masked reconstruction loss
    mask: jax.Array  # (N,)


def reconstruction_loss(model, params, batch: dict, *, key=None) -> jax.Array:
    """Per-clip masked reconstruction loss (B,) of a masked autoencoder (models.mae.MAE) on
    a padded batch x (B, frames, bins), the patch mask drawn from `key` (None: a fixed key,
    so that evaluations compare)."""
    return model.apply({"params": params}, batch["x"], key=key).loss


def _rngs(rng):
    return None if rng is None else {"dropout": rng}


def padded_forward(model, params, batch: dict, *, train: bool, rng=None) -> Clips:
    """batch x (B, frames, bins), y (B, C), mask (B,) [, teacher_probs (B, C)]."""
    logits = model.apply({"params": params}, batch["x"], train=train, rngs=_rngs(rng))
    return Clips(logits=logits, targets=batch["y"], mask=batch["mask"],
                 teacher_probs=batch.get("teacher_probs"))


def packed_forward(model, params, batch: dict, *, train: bool, rng=None) -> Clips:
    """batch: packed arrays (data.packed), y (R, S, C), mask (R, S) [, teacher_probs (R, S, C)];
    slots are flattened row-major into clips."""
    logits, _ = model.apply({"params": params}, {k: batch[k] for k in PACKED_INPUTS},
                            train=train, rngs=_rngs(rng))
    flat = lambda a: None if a is None else a.reshape((-1,) + a.shape[2:])
    return Clips(logits=flat(logits), targets=flat(batch["y"]), mask=flat(batch["mask"]),
                 teacher_probs=flat(batch.get("teacher_probs")))


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a model reads batches: its forward to per-clip outputs, the model input of a
    batch (for `init`), and a host-side check of a batch before it goes to the device."""

    forward: Callable[..., Clips]  # (model, params, batch, *, train, rng=None)
    inputs: Callable[[dict], Any]
    check: Callable[[Any, dict], None]  # (model, host batch) -> None or raises


PADDED = Kind(forward=padded_forward, inputs=lambda batch: batch["x"],
              check=lambda model, batch: None)
PACKED = Kind(forward=packed_forward,
              inputs=lambda batch: {k: batch[k] for k in PACKED_INPUTS},
              check=lambda model, batch: check_positions(model, batch["positions"]))


def kind_of(model) -> Kind:
    """PACKED for a model that reads packed rows (`models.is_packed`), else PADDED."""
    return PACKED if models.is_packed(model) else PADDED


def eval_forward(model, mesh, frontend=None) -> Callable:
    """Jitted params, global batch -> Clips (no teacher) replicated on every device and
    host; cached so that periodic evaluations and every pipeline of an evaluation table
    (same batch shapes) run one compiled program. A waveform batch (wave, wave_len: the
    on-device front-end) is made into features by `frontend` first."""
    return _eval_forward(model, mesh, frontend)  # one cache key however it is called


@functools.lru_cache(maxsize=8)
def _eval_forward(model, mesh, frontend) -> Callable:
    forward = kind_of(model).forward
    reconstructs = models.objective(model) == "reconstruct"

    def clips(params, batch):
        if "wave" in batch:  # dither (if any) from a fixed key: eval stays deterministic
            batch = device_batch(batch, frontend=frontend, key=jax.random.PRNGKey(0))
        if reconstructs:  # the fixed mask key of reconstruction_loss
            return Reconstruction(loss=reconstruction_loss(model, params, batch),
                                  mask=batch["mask"])
        return forward(model, params, batch, train=False).replace(teacher_probs=None)

    return jax.jit(clips, out_shardings=NamedSharding(mesh, P()))


def _pipeline_forward(model, mesh, pipeline) -> Callable:
    """`eval_forward` for the batches of `pipeline` (features, or waveforms + front-end)."""
    return eval_forward(model, mesh, pipeline.frontend if getattr(pipeline, "waves", False)
                        else None)


def time_forwards(entries: Sequence[tuple[Any, Any]], *, pipeline, mesh, rounds: int
                  ) -> tuple[list[bench.Timing], int]:
    """Times each (model, params)'s jitted forward alone on the first batch of `pipeline`,
    the models against each other: all compiled first, then `rounds` interleaved rounds of
    one call each (`bench.measure_interleaved`), so a load that comes and goes hits them
    alike.

    entries: models reading the same batches (e.g. ToMe r settings of one checkpoint, or
        the stages of a recipe), each with its params.
    Returns: a Timing per entry and the clips in the batch (clips/s = timing.rate(clips)).
    """
    local, _ = next(iter(pipeline.iterate()))
    first, first_params = entries[0]
    kind_of(first).check(first, local)
    batch = sharding.global_batch(local, mesh)
    fwds = [_pipeline_forward(model, mesh, pipeline) for model, _ in entries]
    clips = int((np.asarray(fwds[0](first_params, batch).mask) > 0).sum())
    timings = bench.measure_interleaved(
            {str(i): functools.partial(fwd, params, batch)
             for i, (fwd, (_, params)) in enumerate(zip(fwds, entries))}, repeats=rounds)
    return [timings[str(i)] for i in range(len(entries))], clips


def evaluate(params, *, model, pipeline, mesh, multi_label: bool,
             desc: str = "eval") -> dict[str, float]:
    """accuracy (and mAP for multi-label) over one pass of `pipeline` (padded or packed, as
    the model reads) - for a model whose objective is "reconstruct", the mean masked
    reconstruction "loss" instead (fixed mask key) - plus clips/s of the model alone
    (jitted forward, compilation and host work excluded; one pass, so noisy on a small set:
    `time_forwards` compares models), num_clips and bad_clips."""
    fwd, check = _pipeline_forward(model, mesh, pipeline), kind_of(model).check
    outputs, seconds, clips = [], 0.0, 0
    for i, (local, _) in enumerate(tqdm(pipeline.iterate(), total=pipeline.steps(0), desc=desc,
                                        leave=False, disable=jax.process_index() != 0)):
        check(model, local)
        batch = sharding.global_batch(local, mesh)
        if i == 0:
            jax.block_until_ready(fwd(params, batch))  # compile outside the timing
        start = time.perf_counter()
        out = jax.block_until_ready(fwd(params, batch))
        seconds += time.perf_counter() - start
        valid = np.asarray(out.mask) > 0
        outputs.append(jax.tree.map(lambda a: np.asarray(a)[valid], out))
        clips += int(valid.sum())
    out = jax.tree.map(lambda *a: np.concatenate(a), *outputs)
    counts = {"clips_per_s": clips / max(seconds, 1e-9), "num_clips": float(clips),
              "bad_clips": float(len(pipeline.bad_clips))}
    if isinstance(out, Reconstruction):
        return {"loss": float(out.loss.mean()), **counts}
    result = {"accuracy": metrics_lib.accuracy(logits=out.logits, targets=out.targets),
              **counts}
    if multi_label:
        result["mAP"] = metrics_lib.mean_average_precision(logits=out.logits,
                                                           targets=out.targets)
    return result
