"""Streaming inference speed: real-time factor and latency per hop, one run.

    python benchmarks/stream.py [--models demo base] [--checkpoint WORKDIR] [--seconds 30]
        [--hop_s 1.0] [--tome] [--on_device]

For each model, a generated stream of `--seconds` s (tones and noise) runs through
`fast_ast_jax.streaming.stream_scores` (what `python -m fast_ast_jax.stream` runs) in chunks
of one hop, pulled as fast as they are scored:

    RTF: processing time / audio time of the stream (< 1: keeps up with a live source;
        compilation is left out: a warm-up stream of one hop runs first, its time is the
        "warm-up s" column);
    latency per hop, median and p95: from the arrival of the chunk that completes a hop to
        its scores (the window's features and the model; the command prints the line right
        then); a change of label is reported within window + hop of it, plus this;
    GMACs per hop: the model's MACs for one window (fast_ast_jax.bench.ast_macs).

Models: "demo" is configs/demo.py's AST-tiny (4 blocks, 128 frames = 1.3 s window; random
init, or --checkpoint's trained model), "base" AST-base from configs/audioset.py (12
blocks, 1024 frames = 10.2 s window, random init); --tome adds each with ToMe at half the
MACs (bench.halving_tome_r). Features are made on the host unless --on_device (the scorer's
default off the CPU).

Prints `uptime` with the table: figures taken on a loaded machine are not results.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fast_ast_jax import bench, checkpoints  # noqa: E402
from fast_ast_jax.audio.frontend import FrontEnd  # noqa: E402
from fast_ast_jax.bundle import Bundle  # noqa: E402
from fast_ast_jax.streaming import hop_frames_for, stream_scores, window_seconds  # noqa: E402
from fast_ast_jax.train.config import recipe  # noqa: E402
from fast_ast_jax.train.spec import read_config  # noqa: E402
from fast_ast_jax.train.task import build_model  # noqa: E402
from fast_ast_jax.windows import scorer  # noqa: E402

CONFIGS = {"demo": "configs/demo.py", "base": "configs/audioset.py"}


def random_bundle(config_path: str, *, num_classes: int = 8) -> Bundle:
    """A randomly initialised model of a config, with its front-end (speed only)."""
    c = recipe(str(ROOT / config_path))
    fe = FrontEnd.from_dict(c.frontend.to_dict())
    model = build_model(read_config(c).model, num_classes=num_classes)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros(
        (1, fe.target_frames, fe.num_mel_bins), np.float32))["params"]
    return Bundle(model=model, params=params, frontend=fe,
                  labels=tuple(f"class_{i}" for i in range(num_classes)))


def stream_wave(seconds: float, *, sample_rate: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.2 * np.sin(2 * np.pi * (200 + 50 * np.floor(t)) * t)
            + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def measure(bundle: Bundle, *, seconds: float, hop_s: float, on_device: bool,
            **overrides) -> dict:
    """RTF, latency per hop (median, p95 ms) and GMACs per hop of one model's stream."""
    sc = scorer(bundle, batch_size=1, on_device=on_device, **overrides)
    fe = sc.frontend
    hop_frames = hop_frames_for(hop_s, frontend=fe)
    block = hop_frames * fe.hop_size
    arrived: list[float] = []

    def chunks(wave):
        for i in range(0, len(wave), block):
            arrived.append(time.perf_counter())
            yield wave[i:i + block]

    def run(wave) -> list[float]:
        """Seconds from the arrival of the chunk that completes each hop to its scores."""
        arrived.clear()
        return [time.perf_counter() - arrived[-1]
                for _ in stream_scores(chunks(wave), scorer=sc, hop_frames=hop_frames)]

    start = time.perf_counter()
    one_hop = ((hop_frames - 1) * fe.hop_size + fe.window_size) / fe.sample_rate
    run(stream_wave(one_hop, sample_rate=fe.sample_rate))  # compiles (the shape of every hop)
    warmup = time.perf_counter() - start
    wave = stream_wave(seconds, sample_rate=fe.sample_rate)
    start = time.perf_counter()
    latency = run(wave)
    elapsed = time.perf_counter() - start
    model = bundle.model.clone(**overrides) if overrides else bundle.model
    macs = (bench.ast_macs(model, frames=fe.target_frames).gmacs
            if hasattr(model, "token_plan") else float("nan"))
    return {"window_s": window_seconds(fe), "hop_s": hop_frames * fe.hop_size / fe.sample_rate,
            "gmacs_per_hop": macs, "hops": len(latency),
            "rtf": elapsed / (len(wave) / fe.sample_rate),
            "latency_median_ms": 1e3 * statistics.median(latency),
            "latency_p95_ms": 1e3 * float(np.percentile(latency, 95)), "warmup_s": warmup}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo", "base"], choices=CONFIGS)
    parser.add_argument("--checkpoint", help="a trained demo workdir (default: random init)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stream length")
    parser.add_argument("--hop_s", type=float, default=1.0)
    parser.add_argument("--tome", action="store_true", help="also ToMe at half the MACs")
    parser.add_argument("--on_device", action="store_true",
                        help="features in the compiled program (default: on the host)")
    args = parser.parse_args(argv)
    before, _ = bench.machine_load()
    rows = []
    for name in args.models:
        bundle = (checkpoints.load_classifier(args.checkpoint)
                  if name == "demo" and args.checkpoint else random_bundle(CONFIGS[name]))
        settings = [("", {})]
        if args.tome:
            settings.append((" ToMe", {"tome_r": bench.halving_tome_r(bundle.model)}))
        for label, overrides in settings:
            print(f"[{time.strftime('%H:%M:%S')}] {name}{label} ...", file=sys.stderr,
                  flush=True)
            row = measure(bundle, seconds=args.seconds, hop_s=args.hop_s,
                          on_device=args.on_device, **overrides)
            rows.append({"model": f"{name}{label}" + (f" r={overrides['tome_r']}"
                                                       if overrides else ""), **row})
    print(f"machine: JAX backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
          f"uptime before: {before}; after: {bench.machine_load()[0]}")
    print(f"{args.seconds:g} s streams in chunks of one hop, features on "
          f"{'the device' if args.on_device else 'the host'}, batch 1")
    print("| model | window s | hop s | GMACs/hop | hops | RTF | latency median ms | "
          "latency p95 ms | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['window_s']:.2f} | {r['hop_s']:.2f} | "
              f"{r['gmacs_per_hop']:.2f} | {r['hops']} | {r['rtf']:.3f} | "
              f"{r['latency_median_ms']:.1f} | {r['latency_p95_ms']:.1f} | "
              f"{r['warmup_s']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
