"""Padded vs packed AST inference on a real clip-length mix (FSDD by default).

Padded: every clip padded/cropped to --frames (AST, batches of --batch clips, CLS+DIST).
Packed: the clips at their native length (capped at --max-frames), packed greedily into
--rows x --max-tokens rows with up to --slots clips per row (ElasticAST, same width/depth).
Both use 16x16 patches with stride 16 and random weights (speed does not depend on them).
Forwards are compiled first, then timed in interleaved rounds (median), so the ratio is taken
under the same machine load. --train times training steps instead (`bench.train_step_fn`:
sigmoid cross-entropy over the real clips, gradient and an AdamW update, one jitted step
each).

    PYTHONPATH=. python benchmarks/packing.py --size tiny --clips 512 --r 16  # --data DIR
    PYTHONPATH=. python benchmarks/packing.py --size tiny --depth 6 --train   # train steps
"""
from __future__ import annotations

import argparse
import csv
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf

from fast_ast_jax import bench, packing
from fast_ast_jax.models.ast import SIZES, create_ast
from fast_ast_jax.models.elastic import ElasticAST

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def native_frames(data: Path, clips: int, max_frames: int) -> np.ndarray:
    """Frames at 10 ms (25 ms window, Kaldi snip_edges) of the first `clips` clips."""
    meta = data / "meta.csv"
    if not meta.is_file():
        raise SystemExit(f"{meta} not found; pass --data DIR with a meta.csv (filename column)")
    with open(meta, newline="") as f:
        rows = list(csv.DictReader(f))[:clips]
    secs = np.array([sf.info(str(data / r["filename"])).duration for r in rows])
    return np.clip(1 + (secs * 16000 - 400).astype(int) // 160, 16, max_frames)


def train_step(forward, num_clips: int):
    """A jitted (params, opt_state), batch -> same: one `bench.train_step_fn` step (AdamW,
    sigmoid cross-entropy, the library's benchmark step) on fixed random labels over the
    forward's real clips (padded: all; packed: the slots holding a clip)."""
    tx, step = bench.train_step_fn(forward)
    labels = jax.nn.one_hot(jnp.arange(num_clips) % 10, 10)

    def run(state, batch):
        # packed: each slot's clip's label (empty slots, -1, have weight 0)
        y = labels[jnp.maximum(batch["slot_index"], 0)] if isinstance(batch, dict) else labels
        params, opt_state, _ = step(*state, batch, y)
        return params, opt_state

    return tx, jax.jit(run)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=FSDD)
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=128, help="padded length")
    ap.add_argument("--max-frames", type=int, default=256, help="packed length cap")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--r", type=int, nargs="*", default=[],
                    help="also time packed ToMe with these merges per row and block")
    ap.add_argument("--depth", type=int, default=None, help="blocks (default: the size's)")
    ap.add_argument("--train", action="store_true", help="time train steps, not forwards")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    frames = native_frames(args.data, args.clips, args.max_frames)
    fields = dict(SIZES[args.size], **({"depth": args.depth} if args.depth else {}))
    ast = create_ast(args.size, num_classes=10, fstride=16, tstride=16, frames=args.frames,
                     **({"depth": args.depth} if args.depth else {}))
    p_ast = jax.jit(ast.init)(jax.random.PRNGKey(0), jnp.zeros((1, args.frames, 128)))
    padded = jnp.asarray(rng.normal(size=(args.batch, args.frames, 128)), jnp.float32)
    el = ElasticAST(num_classes=10, frames=args.max_frames, fstride=16, tstride=16, pool="mean",
                    **fields)
    samples = [packing.patchify(rng.normal(size=(int(n), 128)).astype(np.float32))
               for n in frames]
    group = packing.greedy_batches([len(s[0]) for s in samples], rows=args.rows,
                                   max_tokens=args.max_tokens, max_slots=args.slots)[0]
    packed = packing.pack([samples[i] for i in group], rows=args.rows,
                          max_tokens=args.max_tokens, max_slots=args.slots).arrays()
    p_el = jax.jit(el.init)(jax.random.PRNGKey(0), packed)
    # (params, input) -> (logits, weights 1 for real clips), as bench.train_step_fn takes
    forwards = {"padded": (lambda p, x: (ast.apply(p, x), jnp.ones(len(x))), p_ast, padded,
                           args.batch),
                "packed": (el.apply, p_el, packed, len(group))}
    for r in args.r:
        forwards[f"packed r={r}"] = (el.clone(tome_r=r).apply, p_el, packed, len(group))
    if args.train:
        runs = {}
        for k, (f, p, x, n) in forwards.items():
            tx, step = train_step(f, n)
            runs[k] = (step, (p, tx.init(p)), x, n)
    else:
        runs = {k: (jax.jit(lambda p, x, f=f: f(p, x)[0]), p, x, n)
                for k, (f, p, x, n) in forwards.items()}
    timings = bench.measure_interleaved(
            {k: functools.partial(fn, params, x) for k, (fn, params, x, _) in runs.items()},
            repeats=args.rounds)
    f_dim = (128 - 16) // 16 + 1
    tokens = f_dim * ((frames - 16) // 16 + 1)
    print(f"{len(frames)} clips, native tokens per clip mean {tokens.mean():.1f}; "
          f"padded to {args.frames} frames: {f_dim * ((args.frames - 16) // 16 + 1)} tokens "
          f"+ CLS/DIST, {(frames > args.frames).mean():.3f} of clips cropped")
    for k, (_, _, x, n) in runs.items():
        t = timings[k].median
        extra = (f", {float((packed['segment_ids'] > 0).mean()):.3f} real tokens"
                 if k.startswith("packed") else "")
        what = "train step" if args.train else "call"
        print(f"{k}: {n} clips per {what}{extra}: {t * 1e3:.0f} ms -> {n / t:.0f} clips/s")


if __name__ == "__main__":
    main()
