"""The input loader: a grain dataset over a pipeline's batches, built in-process or in
worker processes; and what the pipelines share around it (`Loadable`, `host_share`).

A pipeline (data.pipeline.Pipeline, data.packed.PackedPipeline) makes each batch as a pure
function `batch(epoch, index)` of its data position, with `steps(epoch)` batches per
epoch. The loader is a random-access `grain.MapDataset` whose element j is the j-th batch
from a start position (epoch after epoch in training, one pass in eval), read ahead:
- `worker_count=0`: in this process, one background thread `prefetch` batches ahead;
- `worker_count=k`: k grain worker processes (`mp_prefetch`; started with "spawn", each
  gets a pickled copy of the pipeline). Worker w builds elements w, w + k, ...: a whole
  batch each, decoding, features and augmentation included, and grain hands them back in
  order. Every batch is still the pure function of its position, so the batches and their
  order are the same for any worker count (tested).

Resumption: the iterator yields (batch, data position after it); the training loop saves
that position in the checkpoint's metadata (`data_position`) and a resumed run starts a
new loader there, so it sees exactly the batches the uninterrupted run would have. (grain's
own iterator state records one position per worker, which would tie a checkpoint to the
worker count; the data position does not.)

Bad clips in worker processes follow the pipeline's `on_bad_clip` as in-process: "fail"
raises the pipeline's AudioError naming the file (grain re-raises it here, in order, after
the batches before it); "skip" replaces or masks the clip in the worker and each batch
brings back the bad clips found while building it, which are merged into this process's
`pipeline.bad_clips` (so train/bad_clips and eval bad_clips count them as in-process).

When to use workers: with `data.cache` on, features are computed once up front in this
process and the workers would only augment; they pay off when the cache is off (AudioSet
scale: decode + fbank per clip every epoch) on a machine with spare cores. Each worker
imports jax and holds its own copy of the pipeline (and of its cache).
"""
from __future__ import annotations

import sys
from typing import Iterator

import grain
import numpy as np
from absl import flags

Position = tuple[int, int]


class _BatchAt:
    """Element j of the loader's dataset: the j-th batch from (epoch, index) as (batch,
    position after it, bad clips found while building it). Picklable: it is what grain
    sends to its worker processes."""

    def __init__(self, pipeline, *, epoch: int, index: int):
        self.pipeline, self.epoch, self.index = pipeline, epoch, index
        self._steps: dict[int, int] = {}  # epoch -> batches (packed epochs differ)
        # (epoch, j of its first batch) of the last lookup: j grows in every reader, so
        # `position` walks from there rather than from the start epoch each batch.
        self._cursor = (epoch, -index)

    def steps(self, epoch: int) -> int:
        if epoch not in self._steps:
            self._steps[epoch] = self.pipeline.steps(epoch)
        return self._steps[epoch]

    def position(self, j: int) -> tuple[int, int, Position]:
        """(epoch, index) of the j-th batch from the start and the position after it."""
        e, first = self._cursor if j >= self._cursor[1] else (self.epoch, -self.index)
        i = j - first
        while i >= self.steps(e):
            i -= self.steps(e)
            e += 1
        self._cursor = (e, j - i)
        return e, i, ((e, i + 1) if i + 1 < self.steps(e) else (e + 1, 0))

    def __call__(self, j: int):
        e, i, after = self.position(j)
        bad = self.pipeline.bad_clips
        known = len(bad)
        batch = self.pipeline.batch(e, i)
        return batch, after, dict(list(bad.items())[known:])  # dicts keep insertion order


def num_batches(pipeline, *, epoch: int, index: int) -> int:
    """Batches the loader yields from (epoch, index): the rest of the epoch in eval, as
    many as the dataset may index in training (it runs epoch after epoch)."""
    if pipeline.train:
        return sys.maxsize - 1
    return max(0, pipeline.steps(epoch) - index)


def iterate(pipeline, *, epoch: int = 0, index: int = 0, worker_count: int = 0,
            prefetch: int = 2) -> Iterator[tuple[dict[str, np.ndarray], Position]]:
    """Yield (this host's batch, data position after it) from (epoch, index) on: forever
    in training, one pass in eval (see the module docstring). Closing the generator (or
    an exception in the consumer) stops the thread / worker processes."""
    if worker_count < 0:
        raise ValueError(f"config.data.worker_count={worker_count}: use 0 (in-process) or a "
                         "number of worker processes")
    at = _BatchAt(pipeline, epoch=epoch, index=index)
    dataset = grain.MapDataset.range(num_batches(pipeline, epoch=epoch, index=index)).map(at)
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1,
                                                        prefetch_buffer_size=max(1, prefetch)))
    if worker_count:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; defaults suit
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)))
    iterator = iter(dataset)
    try:
        for batch, after, bad in iterator:
            if worker_count:
                pipeline.bad_clips.update(bad)
                # Plain arrays: the workers' shared-memory buffers are released at once.
                batch = {k: np.array(v) for k, v in batch.items()}
            yield batch, after
    finally:
        iterator.close()


def host_share(total: int, *, what: str, process_index: int | None,
               process_count: int | None) -> tuple[int, int]:
    """(this host's index, its share of `total`) for a global batch of `total` clips or
    rows split over the hosts (process index and count default to jax's); `what` names
    the setting in the error when `total` does not split."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if total % process_count:
        raise ValueError(f"{what}={total} must be a multiple of the number of hosts "
                         f"({process_count}): each host builds an equal share of a batch")
    return process_index, total // process_count


class Loadable:
    """`iterate` for the pipelines: needs batch(epoch, index), steps(epoch), train,
    bad_clips and worker_count."""

    worker_count: int = 0

    def iterate(self, *, epoch: int = 0, index: int = 0, prefetch: int = 2
                ) -> Iterator[tuple[dict[str, np.ndarray], Position]]:
        """Yield (batch, position after it) from data position (epoch, index) onwards:
        forever in training, one pass in eval (data.loader.iterate)."""
        return iterate(self, epoch=epoch, index=index, worker_count=self.worker_count,
                       prefetch=prefetch)
