"""Streaming inference speed: real-time factor and latency per hop, one run.

    python benchmarks/stream.py [--models demo base] [--checkpoint WORKDIR] [--seconds 30]
        [--hop_s 1.0] [--tome] [--on_device] [--rounds 5]

For each model, a generated stream of `--seconds` s (tones and noise) runs through
`fast_ast_jax.streaming.stream_scores` (what `python -m fast_ast_jax.stream` runs) in chunks
of one hop, pulled as fast as they are scored:

    RTF: processing time / audio time of the stream (< 1: keeps up with a live source;
        compilation is left out: a warm-up stream of one hop runs first, its time is the
        "warm-up s" column), the median of --rounds passes (5) that interleave the models;
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


class Stream:
    """One model's stream, compiled: `run()` times one pass of the generated stream."""

    def __init__(self, bundle: Bundle, *, seconds: float, hop_s: float, on_device: bool,
                 **overrides):
        self.scorer = scorer(bundle, batch_size=1, on_device=on_device, **overrides)
        fe = self.scorer.frontend
        self.hop_frames = hop_frames_for(hop_s, frontend=fe)
        self.block = self.hop_frames * fe.hop_size
        self.wave = stream_wave(seconds, sample_rate=fe.sample_rate)
        self.audio_s = len(self.wave) / fe.sample_rate
        self.arrived: list[float] = []
        start = time.perf_counter()
        one_hop = ((self.hop_frames - 1) * fe.hop_size + fe.window_size) / fe.sample_rate
        self._latencies(stream_wave(one_hop, sample_rate=fe.sample_rate))  # compiles
        self.warmup_s = time.perf_counter() - start
        model = bundle.model.clone(**overrides) if overrides else bundle.model
        self.row = {"window_s": window_seconds(fe),
                    "hop_s": self.hop_frames * fe.hop_size / fe.sample_rate,
                    "gmacs_per_hop": (bench.ast_macs(model, frames=fe.target_frames).gmacs
                                      if hasattr(model, "token_plan") else float("nan"))}

    def _latencies(self, wave) -> list[float]:
        """Seconds from the arrival of the chunk that completes each hop to its scores."""
        def chunks():
            for i in range(0, len(wave), self.block):
                self.arrived.append(time.perf_counter())
                yield wave[i:i + self.block]

        self.arrived.clear()
        return [time.perf_counter() - self.arrived[-1]
                for _ in stream_scores(chunks(), scorer=self.scorer,
                                       hop_frames=self.hop_frames)]

    def run(self) -> tuple[float, list[float]]:
        """(RTF, latencies) of one pass of the stream."""
        start = time.perf_counter()
        latency = self._latencies(self.wave)
        return (time.perf_counter() - start) / self.audio_s, latency


def measure(streams: dict[str, Stream], *, rounds: int) -> list[dict]:
    """RTF (median over rounds) and latency per hop (median, p95 ms over every hop of every
    round) of each stream, the streams interleaved within each round."""
    rtf = {name: [] for name in streams}
    latency = {name: [] for name in streams}
    for _ in range(rounds):
        for name, stream in streams.items():
            r, lat = stream.run()
            rtf[name].append(r)
            latency[name] += lat
    return [{"model": name, **s.row, "hops": len(latency[name]) // rounds,
             "rtf": statistics.median(rtf[name]),
             "latency_median_ms": 1e3 * statistics.median(latency[name]),
             "latency_p95_ms": 1e3 * float(np.percentile(latency[name], 95)),
             "warmup_s": s.warmup_s} for name, s in streams.items()]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo", "base"], choices=CONFIGS)
    parser.add_argument("--checkpoint", help="a trained demo workdir (default: random init)")
    parser.add_argument("--seconds", type=float, default=30.0, help="stream length")
    parser.add_argument("--hop_s", type=float, default=1.0)
    parser.add_argument("--tome", action="store_true", help="also ToMe at half the MACs")
    parser.add_argument("--rounds", type=int, default=5,
                        help="passes of every stream, interleaved (RTF: their median)")
    parser.add_argument("--on_device", action="store_true",
                        help="features in the compiled program (default: on the host)")
    args = parser.parse_args(argv)
    before, _ = bench.machine_load()
    streams = {}
    for name in args.models:
        bundle = (checkpoints.load_classifier(args.checkpoint)
                  if name == "demo" and args.checkpoint else random_bundle(CONFIGS[name]))
        settings = [("", {})]
        if args.tome:
            r = bench.halving_tome_r(bundle.model)
            settings.append((f" ToMe r={r}", {"tome_r": r}))
        for label, overrides in settings:
            print(f"[{time.strftime('%H:%M:%S')}] compiling {name}{label} ...",
                  file=sys.stderr, flush=True)
            streams[f"{name}{label}"] = Stream(bundle, seconds=args.seconds,
                                               hop_s=args.hop_s, on_device=args.on_device,
                                               **overrides)
    print(f"[{time.strftime('%H:%M:%S')}] {args.rounds} rounds of {len(streams)} streams",
          file=sys.stderr, flush=True)
    rows = measure(streams, rounds=args.rounds)
    print(f"machine: JAX backend {jax.default_backend()} ({jax.devices()[0].device_kind}); "
          f"uptime before: {before}; after: {bench.machine_load()[0]}")
    print(f"{args.seconds:g} s streams in chunks of one hop, features on "
          f"{'the device' if args.on_device else 'the host'}, batch 1; {args.rounds} rounds "
          f"interleaving the models (RTF: median of the rounds; latency: every hop of all)")
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
