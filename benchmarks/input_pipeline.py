"""Can the host feed the accelerator? Loader clips/s next to train-step clips/s (issue 13).

Measured in one run on one machine:
- host loader clips/s over generated 10 s FLAC clips: decode + resample + NumPy fbank (the
  host front-end) and decode + resample only (what the host does with
  config.frontend.on_device), through the project's loader (a FolderSource over the
  files, Pipeline with the cache off -> data.loader), in-process (workers=0) and in grain
  worker processes (steady state: timed over --clips' worth of batches after a warm-up);
- for files not at 16 kHz, the same after converting them once with
  `python -m fast_ast_jax.data.resample` (decode only, no resampling left per epoch);
- the jitted train step (fast_ast_jax.train.step.train_step, AdamW, sigmoid loss) of
  AST-base at 1024 frames on this machine's default device: on features (fp32), with ToMe
  at the smallest constant r that halves the MACs (r=101 at 1024 frames), and on waveforms
  with the on-device front-end inside the step;
- the on-device front-end alone (jitted device_features) and its cost as a fraction of the
  train step.
Targets: host work per clip with the on-device front-end >= 5x less than with the host
front-end; the on-device front-end <= 5 % of an AST-base train step.

The machine's load (`uptime`) is printed before and after; timings under load are not
results, so --out refuses to write when the 1-minute load (the larger of before and after)
exceeds 1.5, unless --allow-load.

    python -m benchmarks.input_pipeline --out docs/input_pipeline.json   # full, idle machine
    python -m benchmarks.input_pipeline --quick                          # smoke test, seconds
"""
from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import soundfile as sf

from fast_ast_jax import bench
from fast_ast_jax.audio.fbank_jax import device_features, pad_waves, samples_for_frames
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.data import FolderSource
from fast_ast_jax.data.pipeline import Pipeline
from fast_ast_jax.data.resample import convert_folder
from fast_ast_jax.models.ast import create_ast
from fast_ast_jax.train.state import TrainState
from fast_ast_jax.train.step import train_step

NUM_CLASSES = 527


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=48, help="FLAC clips generated and loaded")
    p.add_argument("--seconds", type=float, default=10.0, help="clip length")
    p.add_argument("--file-rate", type=int, default=44100,
                   help="sample rate of the files (resampled to 16 kHz on load)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                   help="loader worker processes (0 = in-process)")
    p.add_argument("--loader-batch", type=int, default=4, help="loader batch size")
    p.add_argument("--size", default="base", help="AST size of the train step")
    p.add_argument("--depth", type=int, default=None, help="override the AST depth")
    p.add_argument("--frames", type=int, default=1024, help="model input frames")
    p.add_argument("--batch", type=int, default=2, help="train-step batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke version (few 1 s clips, 4-block AST-tiny, 128 frames)")
    p.add_argument("--out", type=Path, default=None, help="write the results (.json)")
    p.add_argument("--allow-load", action="store_true",
                   help=f"write --out even when the 1-min load exceeds {bench.MAX_LOAD}")
    args = p.parse_args(argv)
    if args.quick:
        args.clips, args.seconds, args.workers, args.loader_batch = 6, 1.0, [0, 1], 2
        args.size, args.depth, args.frames, args.batch, args.repeats = "tiny", 4, 128, 2, 1
    if args.clips < 2 or args.batch < 1 or args.repeats < 1 or min(args.workers) < 0:
        p.error("need --clips >= 2, --batch >= 1, --repeats >= 1, --workers >= 0")
    if args.clips < args.loader_batch:
        p.error("--clips must be >= --loader-batch (the loader times --clips' worth)")
    return args


def make_clips(directory: Path, *, count: int, seconds: float, rate: int) -> list[Path]:
    """`count` 16-bit FLAC files of noise + tones + a silent stretch, `seconds` long."""
    rng = np.random.default_rng(0)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    paths = []
    for i in range(count):
        wave = rng.uniform(0.01, 0.1) * rng.standard_normal(n)
        for freq in rng.uniform(100, 5000, size=3):
            wave += rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * freq * t)
        wave[n // 3: n // 3 + n // 10] = 0.0
        paths.append(directory / f"clip{i:04d}.flac")
        sf.write(paths[-1], np.clip(wave, -1, 1), rate, subtype="PCM_16")
    (directory / "meta.csv").write_text(
        "filename,label\n" + "".join(f"{p.name},noise\n" for p in paths))
    return paths


def loader_rate(directory: Path, *, frontend: FrontEnd, waves: bool, workers: int,
                batch: int, batches: int) -> float:
    """Steady-state clips/s of the project's loader (Pipeline.iterate -> data.loader, cache
    off, no augmentation) over the FLAC files listed in directory/meta.csv: decode +
    resample + NumPy fbank + batching (the host front-end), or decode + resample + batching
    only (`waves`: what the host does with config.frontend.on_device), in-process
    (workers=0, one thread ahead) or in grain worker processes. Timed over `batches`
    batches after 2 + 2 * workers warm-up batches (worker start-up imports jax, and each
    worker's first batches fill its buffer: neither is the steady state)."""
    source = FolderSource(csv_path=directory / "meta.csv", sample_rate=frontend.sample_rate)
    pipeline = Pipeline(source, frontend=frontend, batch_size=batch, train=True, cache=False,
                        waves=waves, worker_count=workers, process_index=0, process_count=1)
    items = pipeline.iterate()
    try:
        for _ in range(2 + 2 * workers):
            next(items)
        start = time.perf_counter()
        for _ in range(batches):
            next(items)
        return batches * batch / (time.perf_counter() - start)
    finally:
        items.close()


def converted_rates(directory: Path, *, args, frontend: FrontEnd) -> dict:
    """The files converted once to the front-end's rate (fast_ast_jax.data.resample): the
    conversion's clips/s (in-process) and the decode-only loader's clips/s over the result,
    what the host does per clip and epoch after the conversion."""
    out = directory / "converted"
    start = time.perf_counter()
    convert_folder(csv_path=directory / "meta.csv", out_dir=out,
                   sample_rate=frontend.sample_rate)
    rates = {"conversion": args.clips / (time.perf_counter() - start)}
    print(f"one-off conversion to {frontend.sample_rate} Hz FLAC (python -m "
          f"fast_ast_jax.data.resample): {rates['conversion']:8.1f} clips/s; then:")
    for workers in args.workers:
        rate = loader_rate(out, frontend=frontend, waves=True, workers=workers,
                           batch=args.loader_batch, batches=args.clips // args.loader_batch)
        rates[f"decode_only_workers{workers}"] = rate
        print(f"  {'decode only':<14} workers={workers}: {rate:8.1f}", flush=True)
    return rates


def device_rates(args, frontend: FrontEnd) -> dict:
    """Clips/s of the train steps and of the on-device front-end alone."""
    rng = np.random.default_rng(1)
    b, samples = args.batch, samples_for_frames(frontend.target_frames, frontend=frontend)
    waves = pad_waves([0.1 * rng.standard_normal(samples).astype(np.float32)
                       for _ in range(b)], samples=samples)
    x = jnp.asarray(rng.standard_normal((b, args.frames, frontend.num_mel_bins)), jnp.float32)
    y = jnp.asarray(rng.random((b, NUM_CLASSES)) < 0.05, jnp.float32)
    mask = jnp.ones((b,), jnp.float32)
    tx = optax.adamw(1e-4, weight_decay=1e-4)
    kw = dict(num_classes=NUM_CLASSES, frames=args.frames, fstride=10, tstride=10,
              num_mel_bins=frontend.num_mel_bins, **({"depth": args.depth} if args.depth
                                                     else {}))
    r = bench.halving_tome_r(create_ast(args.size, **kw))
    params = jax.jit(create_ast(args.size, **kw).init)(jax.random.key(0), x[:1])["params"]
    rates = {"tome_r": r}
    cases = (("step_fp32", {}, {"x": x}), ("step_tome", {"tome_r": r}, {"x": x}),
             ("step_fp32_wave_in", {}, waves))
    for name, fields, inputs in cases:
        model = create_ast(args.size, **kw, **fields)
        step = jax.jit(functools.partial(train_step, model=model, tx=tx, loss="sigmoid",
                                         lr_fn=optax.constant_schedule(1e-4),
                                         frontend=frontend))
        state = TrainState(params=params, opt_state=tx.init(params),
                           step=jnp.zeros((), jnp.int32), rng=jax.random.key(0))
        batch = {**inputs, "y": y, "mask": mask}
        timing = bench.measure_throughput(step, state, batch, repeats=args.repeats)
        rates[name] = timing.rate(b)
        print(f"  {name:<20} {rates[name]:10.2f} clips/s", flush=True)
    fe_fn = jax.jit(lambda w, n: device_features(w, frontend=frontend, lengths=n))
    timing = bench.measure_throughput(fe_fn, waves["wave"], waves["wave_len"],
                                      repeats=max(args.repeats, 3))
    rates["frontend_alone"] = timing.rate(b)
    print(f"  {'frontend_alone':<20} {rates['frontend_alone']:10.2f} clips/s", flush=True)
    return rates


def main(argv=None) -> dict:
    args = parse_args(argv)
    # The load at start is other processes' (the benchmark itself then keeps the cores busy).
    before, _ = bench.refuse_loaded_results(args.out, allow_load=args.allow_load)
    print(f"uptime before: {before}")
    print(f"devices: {jax.devices()}")
    frontend = FrontEnd(target_frames=args.frames)
    results = {"args": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in vars(args).items()},
               "device": str(jax.devices()[0].device_kind), "loader": {}}
    with tempfile.TemporaryDirectory() as tmp:
        make_clips(Path(tmp), count=args.clips, seconds=args.seconds, rate=args.file_rate)
        print(f"host loader, {args.clips} FLAC clips of {args.seconds:g} s at "
              f"{args.file_rate} Hz -> {frontend.sample_rate} Hz, batches of "
              f"{args.loader_batch} (clips/s):")
        for label, waves in (("host_frontend", False), ("decode_only", True)):
            for workers in args.workers:
                rate = loader_rate(Path(tmp), frontend=frontend, waves=waves,
                                   workers=workers, batch=args.loader_batch,
                                   batches=args.clips // args.loader_batch)
                results["loader"][f"{label}_workers{workers}"] = rate
                print(f"  {label:<14} workers={workers}: {rate:8.1f}", flush=True)
        if args.file_rate != frontend.sample_rate:
            results["converted"] = converted_rates(Path(tmp), args=args, frontend=frontend)
    loader = results["loader"]
    host_ratio = loader["decode_only_workers0"] / loader["host_frontend_workers0"]
    print(f"host work per clip, host front-end / decode only (in-process): "
          f"{host_ratio:.1f}x (target >= 5x)")
    if "converted" in results:
        converted_ratio = (results["converted"]["decode_only_workers0"]
                           / loader["host_frontend_workers0"])
        results["converted"]["host_work_ratio"] = converted_ratio
        print(f"  after a one-off conversion to {frontend.sample_rate} Hz: "
              f"{converted_ratio:.1f}x")
    print(f"train step, AST-{args.size}{f' depth {args.depth}' if args.depth else ''} at "
          f"{args.frames} frames, batch {args.batch}, {jax.default_backend()}:")
    rates = device_rates(args, frontend)
    share = {k: rates[k] / rates["frontend_alone"]
             for k in ("step_fp32", "step_tome")}  # front-end time / step time
    print(f"on-device front-end = {100 * share['step_fp32']:.2f} % of the fp32 step, "
          f"{100 * share['step_tome']:.2f} % of the ToMe r={rates['tome_r']} step "
          f"(target <= 5 %)")
    after, _ = bench.machine_load()
    print(f"uptime after: {after}")
    results.update(device_rates=rates, host_work_ratio=host_ratio,
                   frontend_share_of_step=share, uptime_before=before, uptime_after=after)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
