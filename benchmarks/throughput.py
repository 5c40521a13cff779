"""Throughput of AST forward passes and training steps: baseline vs ToMe vs TopK vs PyTorch.

One command prints, for every --frames value (tstride = fstride = 10), a table of
    baseline (chunked attention), baseline with the plain "xla" attention, ToMe at each --r
    (constant r per block; "half" = the smallest r that halves the MACs), TopK at each
    --keep-rates (pruning blocks 3, 6, 9), and PyTorch HF `ASTForAudioClassification`
with MACs (G per clip), clips/s, speedup over the baseline, ideal speedup (MAC ratio) and
efficiency (speedup / ideal). All forward variants are compiled first and then timed in
interleaved rounds (one call of each per round, median over rounds), so every ratio is taken
under the same machine load. With --train it also times a jitted value_and_grad + AdamW step
(random data, sigmoid cross-entropy) with and without ToMe at the MAC-halving r and reports
XLA's compiled temp memory.

    python benchmarks/throughput.py --size base --frames 1024 512 --batch 2 --repeats 5 \
        --r half 100 --keep-rates 0.9 0.7 0.5 --out docs/throughput.md

Figures are only honest on an idle machine: with --out, the script refuses to start when the
1-minute load average exceeds bench.MAX_LOAD (--allow-load overrides, for smoke runs), and the
table header records the load average before and after the run.

No XLA flags are set here: on the 2-core CPU we measured, the defaults were fastest (oneDNN /
XNNPACK / fast-math flags were equal or slower for the dense layers). Pass your own through
XLA_FLAGS to try others.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from fast_ast_jax import bench
from fast_ast_jax.models import attention
from fast_ast_jax.models.ast import SIZES, create_ast, gelu_exact

STRIDE = 10
MEL = 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--depth", type=int, default=None,
                   help="override the number of blocks (quick smoke runs)")
    p.add_argument("--frames", type=int, nargs="+", default=[1024, 512])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--r", nargs="*", default=["half", "50"],
                   help='ToMe r per block (ints, or "half" = r that halves MACs)')
    p.add_argument("--keep-rates", type=float, nargs="*", default=[0.9, 0.8, 0.7, 0.6, 0.5])
    p.add_argument("--no-xla-baseline", action="store_true",
                   help="skip the baseline row with the plain einsum attention")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch HF AST")
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count()],
                   help="PyTorch thread counts, one row each; JAX/PyTorch is relative to the "
                        "first (default: all cores, as XLA uses)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="also time training steps and compiled temp memory")
    p.add_argument("--train-frames", type=int, nargs="*", default=None,
                   help="frames for the training rows (default: every --frames value)")
    p.add_argument("--profile", action="store_true",
                   help="also time the parts of one block (where the forward time goes)")
    p.add_argument("--out", type=Path, default=None, help="write the tables (.md or .json)")
    p.add_argument("--allow-load", action="store_true",
                   help=f"write --out even when the 1-min load average exceeds {bench.MAX_LOAD}")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    for r in args.r:
        if r != "half" and not r.isdigit():
            p.error(f'--r values must be non-negative ints or "half", got {r!r}')
    for k in args.keep_rates:
        if not 0.0 < k <= 1.0:
            p.error(f"--keep-rates must lie in (0, 1], got {k}")
    return args


def model_for(args, frames: int, **reduction):
    depth = {} if args.depth is None else dict(depth=args.depth)
    return create_ast(args.size, frames=frames, num_mel_bins=MEL, fstride=STRIDE,
                      tstride=STRIDE, **depth, **reduction)


def variants(args, frames: int) -> list[tuple[str, dict, str | None]]:
    """(label, AST reduction fields, attention implementation) for the forward table."""
    out = [("baseline", {}, None)]
    if not args.no_xla_baseline:
        out.append(("baseline, xla attention", {}, "xla"))
    for r in args.r:
        if r == "half":
            r = bench.halving_tome_r(model_for(args, frames), frames=frames)
        r = int(r)
        out.append((f"ToMe r={r}", dict(tome_r=r), None))
    for k in args.keep_rates:
        out.append((f"TopK keep={k:g}", dict(prune_keep_rate=k), None))
    return out


def torch_forward(args, frames: int, batch: np.ndarray, threads: int):
    """A callable running PyTorch HF AST (random weights, fp32, inference mode)."""
    try:
        import torch
        from transformers import ASTConfig, ASTForAudioClassification
    except ImportError as e:
        log(f"PyTorch HF AST skipped: {e}")
        return None
    s = SIZES[args.size]
    config = ASTConfig(hidden_size=s["width"], num_hidden_layers=args.depth or s["depth"],
                       num_attention_heads=s["num_heads"], intermediate_size=s["mlp_dim"],
                       max_length=frames, num_mel_bins=MEL, frequency_stride=STRIDE,
                       time_stride=STRIDE, num_labels=527)
    model = ASTForAudioClassification(config).eval()
    x = torch.from_numpy(batch)

    def run():
        # Thread count is process-global in torch: set it on every call (interleaved rows).
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(x).logits

    log(f"torch {torch.__version__}, {threads} threads, attention "
        f"{model.config._attn_implementation}")
    return run


def forward_table(args, frames: int) -> list[dict]:
    x = np.random.default_rng(0).standard_normal((args.batch, frames, MEL), dtype=np.float32)
    xj = jnp.asarray(x)
    params = None
    fns, macs = {}, {}
    for label, fields, impl in variants(args, frames):
        model = model_for(args, frames, **fields)
        if params is None:
            params = jax.jit(model.init)(jax.random.key(0), xj[:1])["params"]
        macs[label] = bench.ast_macs(model, frames=frames)
        log(f"compile {label} ({macs[label].gmacs:.1f} GMACs)")
        fwd = jax.jit(lambda p, x, model=model: model.apply({"params": p}, x))
        with attention.default_implementation(impl or "auto"):
            compiled = fwd.lower(params, xj).compile()
        fns[label] = lambda c=compiled: c(params, xj)
    torch_label = None
    for threads in [] if args.no_torch else args.threads:
        run = torch_forward(args, frames, x, threads)
        if run is None:
            break
        label = f"PyTorch HF AST, {threads} threads"
        torch_label = torch_label or label
        fns[label] = run
        macs[label] = macs["baseline"]
    timings = bench.measure_interleaved(fns, warmup=args.warmup, repeats=args.repeats,
                                        log=log)
    base_rate = timings["baseline"].rate(args.batch)
    rows = []
    for label, timing in timings.items():
        rate = timing.rate(args.batch)
        ideal = macs["baseline"].total / macs[label].total
        rows.append(dict(
                table="forward", frames=frames, setting=label, batch=args.batch,
                tokens_out=macs[label].layers[-1].tokens_out, gmacs=macs[label].gmacs,
                clips_per_s=rate, speedup=rate / base_rate, ideal_speedup=ideal,
                efficiency=rate / base_rate / ideal, seconds=list(timing.times)))
    if torch_label:
        torch_rate = timings[torch_label].rate(args.batch)
        for row in rows:
            row["vs_torch"] = row["clips_per_s"] / torch_rate
    return rows


def train_table(args, frames: int) -> list[dict]:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((args.batch, frames, MEL), dtype=np.float32))
    y = jnp.asarray(rng.random((args.batch, 527)) < 0.05, jnp.float32)
    r = bench.halving_tome_r(model_for(args, frames), frames=frames)
    fns, macs, memory = {}, {}, {}
    params = None
    for label, fields in (("baseline", {}), (f"ToMe r={r}", dict(tome_r=r))):
        model = model_for(args, frames, **fields)
        if params is None:
            params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]
        tx, step = bench.train_step_fn(
                lambda p, x, model=model: (model.apply({"params": p}, x), jnp.ones(len(x))))
        opt_state = tx.init(params)
        macs[label] = bench.ast_macs(model, frames=frames)
        log(f"compile train step {label}")
        compiled = jax.jit(step).lower(params, opt_state, x, y).compile()
        memory[label] = compiled.memory_analysis().temp_size_in_bytes
        fns[label] = lambda c=compiled, o=opt_state: c(params, o, x, y)
    timings = bench.measure_interleaved(fns, warmup=args.warmup, repeats=args.repeats,
                                        log=log)
    base = timings["baseline"].rate(1)
    rows = []
    for label, timing in timings.items():
        rate = timing.rate(1)
        ideal = macs["baseline"].total / macs[label].total
        rows.append(dict(
                table="train", frames=frames, setting=label, batch=args.batch,
                gmacs=macs[label].gmacs, steps_per_s=rate, speedup=rate / base,
                ideal_speedup=ideal, efficiency=rate / base / ideal,
                temp_mib=memory[label] / 2 ** 20,
                temp_ratio=memory[label] / memory["baseline"], seconds=list(timing.times)))
    return rows


PEAK_GEMM = 2048  # the reference GEMM: (n x n) @ (n x n), big enough to run at the peak


def torch_parts(args, *, x, q, k, v, params: dict) -> dict:
    """PyTorch (--threads[0] threads, inference mode) counterparts of the profiled block
    parts and of the reference GEMM, on the same arrays and the Flax Dense weights in
    `params` (name -> variables); {} without torch or with --no-torch."""
    if args.no_torch:
        return {}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        log(f"PyTorch parts skipped: {e}")
        return {}
    t = lambda a: torch.from_numpy(np.array(a))  # a writable copy
    dense = {n: (t(p["params"]["kernel"]).T.contiguous(), t(p["params"]["bias"]))
             for n, p in params.items()}
    tx, w = t(x), x.shape[-1]
    # SDPA takes (B, heads, T, head_dim)
    tq, tk, tv = (t(a).transpose(1, 2).contiguous() for a in (q, k, v))
    g = torch.randn(PEAK_GEMM, PEAK_GEMM)
    parts = {
        "2x LayerNorm": lambda: F.layer_norm(F.layer_norm(tx, (w,), eps=1e-6), (w,), eps=1e-6),
        "qkv + out projections": lambda: F.linear(F.linear(tx, *dense["qkv"])[..., :w],
                                                  *dense["out"]),
        "attention (chunked)": lambda: F.scaled_dot_product_attention(tq, tk, tv),
        "MLP (fc1, exact GELU, fc2)": lambda: F.linear(F.gelu(F.linear(tx, *dense["fc1"])),
                                                       *dense["fc2"]),
        f"GEMM {PEAK_GEMM}^3 (peak reference)": lambda: g @ g,
    }
    threads = args.threads[0]

    def wrap(fn):
        def run():
            torch.set_num_threads(threads)  # process-global: set on every call
            with torch.inference_mode():
                return fn()
        return run

    # the attention row is SDPA, whichever JAX kernel it sits next to
    return {f"PyTorch {threads} threads: {n.replace(' (chunked)', ' (SDPA)')}": wrap(fn)
            for n, fn in parts.items()}


def profile_table(args, frames: int) -> list[dict]:
    """Seconds per forward spent in each part of the blocks, timed part by part, with the
    part's model FLOP rate; the same parts in PyTorch; and a GEMM big enough to run at the
    cores' peak, the ceiling that the dense parts are measured against.

    Each part of one block is compiled alone on (batch, tokens, width) inputs and timed in
    interleaved rounds; the row scales it by depth. The parts do not add up exactly to the
    whole forward (fusion across parts, patch embedding and head are left out).
    """
    s = {**SIZES[args.size], **({} if args.depth is None else dict(depth=args.depth))}
    w, heads, depth, mlp_dim = s["width"], s["num_heads"], s["depth"], s["mlp_dim"]
    tokens = bench.layer_tokens(model_for(args, frames), frames=frames)[0].tokens_in
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((args.batch, tokens, w), dtype=np.float32))
    q, k, v = (jnp.asarray(rng.standard_normal((args.batch, tokens, heads, w // heads),
                                               dtype=np.float32)) for _ in range(3))
    ln = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
    dense = {name: nn.Dense(f) for name, f in (("qkv", 3 * w), ("out", w), ("fc1", mlp_dim))}
    fc2 = nn.Dense(w)
    key = jax.random.key(0)
    p_ln, p_qkv, p_out, p_fc1 = (m.init(key, x) for m in (ln, *dense.values()))
    h = jnp.zeros((args.batch, tokens, mlp_dim))
    p_fc2 = fc2.init(key, h)
    g = jnp.asarray(rng.standard_normal((PEAK_GEMM, PEAK_GEMM), dtype=np.float32))

    def mlp(x):
        y = gelu_exact(dense["fc1"].apply(p_fc1, x))
        return fc2.apply(p_fc2, y)

    def attention_matmuls(q, k, v):
        """The two products of attention alone (no softmax), one (batch, head) pair at a
        time: what any attention built from XLA's dots costs at least."""
        pairs = lambda a: a.transpose(0, 2, 1, 3).reshape(-1, tokens, w // heads)
        return jax.lax.map(lambda a: (a[0] @ a[1].T) @ a[2], (pairs(q), pairs(k), pairs(v)))

    bt = args.batch * tokens
    gemm = f"GEMM {PEAK_GEMM}^3 (peak reference)"
    # model FLOPs of one call (2 per multiply-add; LayerNorm not counted)
    flops = {"qkv + out projections": 2 * bt * w * 4 * w,
             "attention (chunked)": 4 * args.batch * tokens * tokens * w,
             "attention (xla)": 4 * args.batch * tokens * tokens * w,
             "attention matmuls only (QK, AV; no softmax)": 4 * args.batch * tokens * tokens * w,
             "MLP (fc1, exact GELU, fc2)": 4 * bt * w * mlp_dim,
             gemm: 2 * PEAK_GEMM ** 3}
    parts = {
        "2x LayerNorm": (lambda x: ln.apply(p_ln, ln.apply(p_ln, x)), x),
        "qkv + out projections": (
                lambda x: dense["out"].apply(p_out, dense["qkv"].apply(p_qkv, x)[..., :w]), x),
        "attention (chunked)": (lambda q, k, v: attention.dot_product_attention(
                q, k, v, implementation="chunked"), q, k, v),
        "attention (xla)": (lambda q, k, v: attention.dot_product_attention(
                q, k, v, implementation="xla"), q, k, v),
        "attention matmuls only (QK, AV; no softmax)": (attention_matmuls, q, k, v),
        "MLP (fc1, exact GELU, fc2)": (mlp, x),
        gemm: (lambda a: a @ a, g),
    }
    fns = {}
    for name, (fn, *fargs) in parts.items():
        compiled = jax.jit(fn).lower(*fargs).compile()
        fns[f"JAX: {name}"] = lambda c=compiled, a=fargs: c(*a)
    fns.update(torch_parts(args, x=x, q=q, k=k, v=v, params=dict(
        qkv=p_qkv, out=p_out, fc1=p_fc1, fc2=p_fc2)))
    timings = bench.measure_interleaved(fns, warmup=args.warmup, repeats=args.repeats,
                                        log=log)
    rows = []
    for name, t in timings.items():
        part = name.split(": ", 1)[1].replace(" (SDPA)", " (chunked)")
        per_forward = 1 if part == gemm else depth
        rows.append(dict(table="profile", frames=frames, setting=name, batch=args.batch,
                         tokens=tokens, seconds_per_forward=per_forward * t.median,
                         gflops_per_s=flops[part] / t.median / 1e9 if part in flops else None,
                         seconds=list(t.times)))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = []
    fwd = [r for r in rows if r["table"] == "forward"]
    if fwd:
        torch = any("vs_torch" in r for r in fwd)
        lines += ["| frames | setting | tokens out | GMACs/clip | clips/s | speedup | ideal | "
                  "efficiency |" + (" JAX/PyTorch |" if torch else ""),
                  "|---" * (8 + torch) + "|"]
        for r in fwd:
            lines.append(
                    f"| {r['frames']} | {r['setting']} | {r['tokens_out']} | {r['gmacs']:.1f} "
                    f"| {r['clips_per_s']:.3f} | {r['speedup']:.2f}x | "
                    f"{r['ideal_speedup']:.2f}x | {r['efficiency']:.2f} |"
                    + (f" {r['vs_torch']:.2f} |" if torch else ""))
    train = [r for r in rows if r["table"] == "train"]
    if train:
        lines += ["", "| frames | train step | GMACs/clip (fwd) | steps/s | speedup | ideal | "
                  "efficiency | temp MiB | temp ratio |", "|---" * 9 + "|"]
        for r in train:
            lines.append(
                    f"| {r['frames']} | {r['setting']} | {r['gmacs']:.1f} | "
                    f"{r['steps_per_s']:.3f} | {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x "
                    f"| {r['efficiency']:.2f} | {r['temp_mib']:.0f} | {r['temp_ratio']:.2f} |")
    prof = [r for r in rows if r["table"] == "profile"]
    if prof:
        lines += ["", "| frames | block part (x depth; the GEMM once) | tokens | "
                  "s per forward | GFLOP/s |", "|---" * 5 + "|"]
        for r in prof:
            rate = "" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:.0f}"
            lines.append(f"| {r['frames']} | {r['setting']} | {r['tokens']} | "
                         f"{r['seconds_per_forward']:.3f} | {rate} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    _, load_start = bench.refuse_loaded_results(args.out, allow_load=args.allow_load)
    log(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} cores, AST-{args.size}, batch {args.batch}")
    rows = []
    for frames in args.frames:
        rows += forward_table(args, frames)
        if args.profile:
            rows += profile_table(args, frames)
    if args.train:
        for frames in args.train_frames if args.train_frames is not None else args.frames:
            rows += train_table(args, frames)
    _, load_end = bench.machine_load()
    table = (f"1-minute load average: {load_start:.2f} at start, {load_end:.2f} at end; "
             f"{os.cpu_count()} cores; jax {jax.__version__}; median of {args.repeats} "
             f"interleaved rounds\n\n" + markdown(rows))
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps(
                    dict(load_1min=dict(start=load_start, end=load_end), rows=rows),
                    indent=1) + "\n")
        else:
            args.out.write_text(table + "\n")
        log(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
