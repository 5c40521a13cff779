"""Cost per clip of a masked-pretraining step (models.mae) vs a supervised AST step.

Both are jitted training steps (forward + backward + AdamW) on random input of one size;
they are compiled first, then timed in interleaved rounds (one call of each per round,
median), so the ratio is taken under one machine load. Printed: analytic forward MACs per
clip (bench.ast_macs; the MAE's encoder on prefix + visible patches plus its decoder),
clips/s, the measured speedup and its efficiency (speedup / MAC ratio), and the load
average before and after. Print only: the figures are the machine's at that load.

    python benchmarks/pretrain_cost.py --size tiny --depth 6 --frames 128 --batch 16
    python benchmarks/pretrain_cost.py --size base --frames 1024 --stride 10 --batch 4
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import log  # noqa: E402
from fast_ast_jax import bench  # noqa: E402
from fast_ast_jax.models import ast, mae  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(ast.SIZES))
    p.add_argument("--depth", type=int, default=None, help="blocks (default: the size's)")
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--mel", type=int, default=128)
    p.add_argument("--stride", type=int, default=16, help="fstride = tstride")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--mask-ratio", type=float, default=0.8)
    p.add_argument("--decoder-width", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    fields = dict(frames=args.frames, num_mel_bins=args.mel, fstride=args.stride,
                  tstride=args.stride, dtype=args.dtype,
                  **({"depth": args.depth} if args.depth else {}))
    supervised = ast.create_ast(args.size, num_classes=10, **fields)
    pretrain = mae.create_mae(args.size, mask_ratio=args.mask_ratio,
                              decoder_width=args.decoder_width,
                              decoder_depth=args.decoder_depth,
                              decoder_heads=args.decoder_heads, **fields)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (args.batch, args.frames, args.mel), dtype=np.float32))
    key = jax.random.PRNGKey(0)

    # The library's benchmark step for the supervised AST (AdamW, sigmoid cross-entropy).
    tx, sup_step = bench.train_step_fn(lambda p, x: (supervised.apply(p, x),
                                                     jnp.ones(len(x))))
    labels = jax.nn.one_hot(jnp.arange(args.batch) % 10, 10)
    sup_params = jax.jit(supervised.init)(key, x[:1])
    sup_state = (sup_params, tx.init(sup_params))
    sup = jax.jit(lambda state: sup_step(*state, x, labels)[:2])

    # The same optimiser on the reconstruction loss, a new mask every step.
    def mae_step(params, opt_state, step_key):
        loss, grads = jax.value_and_grad(
            lambda p: pretrain.apply(p, x, key=step_key).loss.mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    mae_params = jax.jit(lambda k: pretrain.init(k, x[:1], key=k))(key)
    mae_state = (mae_params, tx.init(mae_params))
    pre = jax.jit(lambda state: mae_step(*state, key)[:2])

    line, _ = bench.machine_load()
    log(f"{jax.devices()[0].device_kind}; {line}")
    timings = bench.measure_interleaved({"supervised": lambda: sup(sup_state),
                                         "pretrain": lambda: pre(mae_state)},
                                        warmup=args.warmup, repeats=args.repeats, log=log)
    after, _ = bench.machine_load()
    sup_macs = bench.ast_macs(supervised).total
    enc_macs = bench.ast_macs(pretrain).total
    pre_macs = enc_macs + pretrain.decoder_macs()
    sup_rate = timings["supervised"].rate(args.batch)
    pre_rate = timings["pretrain"].rate(args.batch)
    speedup, ideal = pre_rate / sup_rate, sup_macs / pre_macs
    print(f"{args.size} depth {supervised.depth}, {args.frames} frames x {args.mel} mel, "
          f"stride {args.stride}, batch {args.batch}, {args.dtype}, "
          f"{jax.devices()[0].device_kind}")
    print(f"mask {args.mask_ratio}: encoder on {pretrain.num_prefix} + "
          f"{pretrain.num_visible} of {pretrain.num_prefix} + {pretrain.num_patches} tokens; "
          f"decoder {args.decoder_width} wide x {args.decoder_depth}")
    print(f"load before: {line}\nload after:  {after}")
    print("| step | forward GMACs / clip | clips/s |\n|---|---|---|")
    print(f"| supervised AST | {sup_macs / 1e9:.3f} | {sup_rate:.1f} |")
    print(f"| masked pretraining (encoder {enc_macs / 1e9:.3f} + decoder "
          f"{(pre_macs - enc_macs) / 1e9:.3f}) | {pre_macs / 1e9:.3f} | {pre_rate:.1f} |")
    print(f"pretraining step: {speedup:.2f}x the supervised clips/s; MAC ratio {ideal:.2f}x; "
          f"efficiency {speedup / ideal:.2f}")
    return {"supervised_macs": sup_macs, "pretrain_macs": pre_macs, "speedup": speedup,
            "mac_ratio": ideal}


if __name__ == "__main__":
    main()
