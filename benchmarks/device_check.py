"""One accelerator check: cuDNN attention numerics in bf16, AST-base bf16 throughput and MFU.

On one GPU, in at most ~8 minutes including compilation, it measures and writes to --out a
markdown report with the device, JAX version and every setting:

1. numerics: `jax.nn.dot_product_attention(implementation="cudnn")` against our XLA path,
   both in bf16, and both against float32: plain attention, ToMe's log-size key bias, and a
   packed segment mask (ElasticAST rows); outputs, query gradients, and the final logits
   of AST-tiny (plain, ToMe) and ElasticAST-tiny (packed) under "cudnn" vs "xla";
2. AST-base (1024 frames, stride 10) jitted bf16 train step (float32 params, softmax and
   loss): clips/s and MFU (model FLOPs / the device's dense bf16 peak from
   `bench.PEAK_BF16_FLOPS`, "n/a" for an unknown device) for the baseline, ToMe at half the
   MACs and TopK keep 0.7, with the attention kernel "auto" picks per block;
3. forward clips/s and MFU of the same three;
4. packed (ElasticAST) vs padded (AST) bf16 train clips/s on FSDD-like clip lengths.

    python benchmarks/device_check.py --out docs/device_check.md          # one GPU
    python benchmarks/device_check.py --smoke --out /tmp/device_check.md  # CPU, < 1 min

--smoke runs tiny versions of the same code paths (CI runs it: tests/test_device_check.py);
on a backend without cuDNN the cuDNN comparisons are skipped with the reason printed, and
the tiled "chunked" attention takes the candidate's place so the comparison code still runs.
The report is rewritten after each section, so a run cut short keeps what it measured;
--sections reruns a subset. The training loop is built here from the models and optax
(`bench.train_step_fn`), not from the trainer, so the check does not move with it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from fast_ast_jax import bench, packing
from fast_ast_jax.models import attention
from fast_ast_jax.models.ast import SIZES, create_ast
from fast_ast_jax.models.elastic import ElasticAST
from fast_ast_jax.models.packed_reduce import segment_mask

SECTIONS = ("numerics", "train", "forward", "packed")
MEL = 128
# FSDD clip lengths in 10 ms frames are close to log-normal: log-mean 3.68, log-std 0.33
# (median 40 frames; measured over the 3000 clips of ../shared/data/fsdd).
FSDD_LOG_MEAN, FSDD_LOG_STD = 3.68, 0.33


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the check runs with (all of it goes into the report)."""

    size: str = "base"
    depth: int | None = None  # None = the size's 12 blocks
    # (field, value) pairs overriding the size's width / num_heads / mlp_dim (smoke runs).
    shape_overrides: tuple = ()
    frames: int = 1024
    stride: int = 10
    num_classes: int = 527
    train_batch: int = 32
    forward_batch: int = 64
    warmup: int = 1
    steps: int = 5
    tome_r: str | int = "half"
    keep_rate: float = 0.7
    prune_layers: tuple = (3, 6, 9)
    # Attention numerics: (batch, tokens, heads, head_dim); the packed case is rows of
    # `packed_tokens` tokens holding clips of FSDD-like lengths.
    attn_shape: tuple = (4, 1214, 12, 64)
    tome_tokens: int = 1120
    packed_rows: int = 8
    packed_tokens: int = 512
    logits_size: str = "tiny"
    logits_depth: int | None = None
    logits_batch: int = 4
    # Packed vs padded training (FSDD-like lengths, stride `stride` patches).
    pad_frames: int = 128
    pad_batch: int = 64
    pack_rows: int = 16
    pack_tokens: int = 512
    pack_slots: int = 32
    pack_max_frames: int = 256
    pack_classes: int = 10
    seed: int = 0


FULL = Settings()
SMOKE = Settings(size="tiny", depth=1, frames=64, train_batch=2, forward_batch=2, steps=1,
                 shape_overrides=(("width", 64), ("num_heads", 2), ("mlp_dim", 128)),
                 tome_r=8, prune_layers=(0,), attn_shape=(2, 48, 2, 64), tome_tokens=40,
                 packed_rows=2, packed_tokens=96, logits_depth=1, logits_batch=2,
                 pad_frames=64, pad_batch=4, pack_rows=2, pack_tokens=96, pack_slots=8,
                 pack_max_frames=96)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny versions of every path (CPU, under a minute)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--compile-threads", type=int, default=4,
                   help="programs compiled at once (1 = one after another)")
    p.add_argument("--out", type=Path, default=None, help="markdown report (rewritten after "
                                                          "each section)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- environment

def cudnn_probe() -> str | None:
    """None when cuDNN's fused attention runs here, else the reason it cannot."""
    if jax.default_backend() != "gpu":
        return f"backend is {jax.default_backend()} (cuDNN needs a CUDA GPU)"
    x = jnp.ones((1, 8, 1, 64), jnp.bfloat16)
    try:
        jax.block_until_ready(jax.nn.dot_product_attention(x, x, x, implementation="cudnn"))
    except Exception as e:  # any failure means: measure the XLA path instead, and say why
        return f"cuDNN attention failed: {type(e).__name__}: {str(e)[:200]}"
    return None


def environment(settings: Settings, cudnn_reason: str | None) -> dict[str, str]:
    device = jax.devices()[0]
    peak = bench.peak_bf16_flops(device.device_kind)
    env = {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": f"{device.device_kind} ({jax.device_count()} x {jax.default_backend()})",
        "jax / jaxlib / flax": f"{jax.__version__} / {jaxlib.__version__} / "
                               f"{flax.__version__}",
        "python": platform.python_version(),
        "bf16 peak used for MFU": "n/a (device kind not in bench.PEAK_BF16_FLOPS)"
        if peak is None else f"{peak / 1e12:.0f} TFLOP/s dense bf16 (datasheet)",
        "cuDNN attention": "used" if cudnn_reason is None else f"skipped: {cudnn_reason}",
    }
    try:
        from jax._src.lib import cuda_versions
        if cuda_versions is not None and jax.default_backend() == "gpu":
            env["cuDNN version"] = str(cuda_versions.cudnn_get_version())
    except (ImportError, AttributeError, RuntimeError):
        pass
    env.update({f"setting {k}": str(v) for k, v in dataclasses.asdict(settings).items()})
    return env


# ------------------------------------------------------------------------------- numerics

def fsdd_like_frames(rng: np.random.Generator, n: int, *, max_frames: int) -> np.ndarray:
    """n clip lengths (10 ms frames) drawn like FSDD's, clipped to [16, max_frames]."""
    return np.clip(rng.lognormal(FSDD_LOG_MEAN, FSDD_LOG_STD, n), 16, max_frames).astype(int)


def packed_segments(rng: np.random.Generator, rows: int, tokens: int, *,
                    clip_tokens: int = 36) -> np.ndarray:
    """(rows, tokens) segment ids 1..S of clips of ~clip_tokens tokens, padded with 0."""
    seg = np.zeros((rows, tokens), np.int32)
    for r in range(rows):
        start, s = 0, 1
        while True:
            n = int(rng.integers(clip_tokens // 2, 2 * clip_tokens))
            if start + n > tokens - tokens // 16:  # leave some padding, as real rows have
                break
            seg[r, start:start + n] = s
            start, s = start + n, s + 1
    return seg


def attention_cases(settings: Settings, rng: np.random.Generator) -> dict[str, dict]:
    """name -> dict(q, k, v (float32), bias, mask, rows (B, Tq) bool of the compared rows)."""
    b, t, h, d = settings.attn_shape
    cases = {}

    def qkv(batch, tokens):
        return [jnp.asarray(rng.standard_normal((batch, tokens, h, d), dtype=np.float32))
                for _ in range(3)]

    q, k, v = qkv(b, t)
    cases["plain"] = dict(q=q, k=k, v=v, bias=None, mask=None, rows=np.ones((b, t), bool))
    tt = settings.tome_tokens
    q, k, v = qkv(b, tt)
    sizes = rng.integers(1, 12, (b, tt)).astype(np.float32)
    cases["ToMe log-size bias"] = dict(
            q=q, k=k, v=v, bias=jnp.asarray(np.log(sizes))[:, None, None, :], mask=None,
            rows=np.ones((b, tt), bool))
    seg = packed_segments(rng, settings.packed_rows, settings.packed_tokens)
    q, k, v = qkv(settings.packed_rows, settings.packed_tokens)
    seg_j = jnp.asarray(seg)
    # Padding queries see no key (their output is masked downstream): compare real rows.
    cases["packed segment mask"] = dict(q=q, k=k, v=v, bias=None,
                                        mask=segment_mask(seg_j, seg_j), rows=seg > 0)
    return cases


def _max_diff(a, b, rows) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b)[rows].max())


def _rel(a, ref, rows) -> float:
    a, ref = np.asarray(a, np.float64)[rows], np.asarray(ref, np.float64)[rows]
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def attention_numerics(settings: Settings, candidate: str) -> list[dict]:
    """`candidate` vs "xla" attention in bf16 (and both vs float32): outputs and dq."""
    rng = np.random.default_rng(settings.seed)
    rows = []
    for name, c in attention_cases(settings, rng).items():
        w = jnp.asarray(rng.standard_normal(c["q"].shape, dtype=np.float32))

        def run(impl, dtype, c=c, w=w):
            def loss(q):
                out = attention.dot_product_attention(
                        q, c["k"].astype(dtype), c["v"].astype(dtype), bias=c["bias"],
                        mask=c["mask"], implementation=impl)
                return (out.astype(jnp.float32) * w).sum(), out
            fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
            (_, out), dq = fn(c["q"].astype(dtype))
            return out, dq

        ref_out, ref_dq = run("xla", jnp.float32)
        xla_out, xla_dq = run("xla", jnp.bfloat16)
        r = c["rows"]
        row = {"case": f"attention, {name} {tuple(c['q'].shape)}"}
        try:
            cand_out, cand_dq = run(candidate, jnp.bfloat16)
        except Exception as e:  # a kernel that refuses these inputs: report it, go on
            rows.append(_failed(row, candidate, e))
            continue
        rows.append({**row,
                     f"max abs({candidate} - xla) out": _max_diff(cand_out, xla_out, r),
                     f"max abs({candidate} - xla) dq": _max_diff(cand_dq, xla_dq, r),
                     f"rel err {candidate} vs f32": _rel(cand_out, ref_out, r),
                     "rel err xla bf16 vs f32": _rel(xla_out, ref_out, r),
                     "note": ""})
    return rows


def _failed(row: dict, candidate: str, error: Exception) -> dict:
    """A numerics row for a candidate kernel that raised (the run goes on)."""
    if candidate != "cudnn":
        raise error
    nan = float("nan")
    log(f"{row['case']}: {candidate} failed: {error!r}")
    return {**row, f"max abs({candidate} - xla) out": nan,
            f"max abs({candidate} - xla) dq": nan, f"rel err {candidate} vs f32": nan,
            "rel err xla bf16 vs f32": nan,
            "note": f"{candidate} failed: {type(error).__name__}: {str(error)[:120]}"}


def logits_numerics(settings: Settings, candidate: str) -> list[dict]:
    """Final logits of AST-tiny (plain, ToMe) and ElasticAST-tiny (packed) in bf16 with
    `candidate` vs "xla" attention everywhere, and each against the float32 model."""
    rng = np.random.default_rng(settings.seed + 1)
    x = jnp.asarray(rng.standard_normal((settings.logits_batch, settings.frames, MEL),
                                        dtype=np.float32))
    plain = ast_model(settings, settings.logits_size, settings.logits_depth,
                      frames=settings.frames, num_classes=settings.num_classes)
    params = jax.jit(plain.init)(jax.random.key(settings.seed), x[:1])["params"]
    r = tome_r(settings, plain)
    name = f"AST-{settings.logits_size}"
    models = {name: (plain, x), f"{name}, ToMe r={r}": (plain.clone(tome_r=r), x)}
    seg_lengths = fsdd_like_frames(rng, 64, max_frames=settings.pack_max_frames)
    batch, _ = packed_batch(settings, seg_lengths, rng)
    el = elastic_model(settings, settings.logits_size, settings.logits_depth,
                       num_classes=settings.num_classes)
    el_params = jax.jit(el.init)(jax.random.key(settings.seed), batch)["params"]
    rows = []
    models[f"Elastic{name}, packed"] = (el, batch)
    for name, (model, inputs) in models.items():
        p = el_params if model is el else params

        def logits(impl, dtype, model=model, inputs=inputs, p=p):
            m = model.clone(dtype=dtype)
            fn = jax.jit(lambda p, x: m.apply({"params": p}, x))
            with attention.default_implementation(impl):
                out = fn.lower(p, inputs).compile()(p, inputs)
            return out[0] if isinstance(out, tuple) else out

        ref, xla = logits("xla", jnp.float32), logits("xla", jnp.bfloat16)
        valid = np.ones(ref.shape[:-1], bool)
        if model is el:
            valid = np.asarray(batch["slot_index"]) >= 0
        row = {"case": f"logits, {name} (bf16)"}
        try:
            cand = logits(candidate, jnp.bfloat16)
        except Exception as e:
            rows.append(_failed(row, candidate, e))
            continue
        rows.append({**row,
                     f"max abs({candidate} - xla) out": _max_diff(cand, xla, valid),
                     f"max abs({candidate} - xla) dq": float("nan"),
                     f"rel err {candidate} vs f32": _rel(cand, ref, valid),
                     "rel err xla bf16 vs f32": _rel(xla, ref, valid),
                     "note": ""})
    return rows


# ----------------------------------------------------------------------------- throughput

def compile_all(jobs: dict[str, tuple[Callable, tuple]], *, threads: int,
                donate: tuple = ()) -> dict:
    """name -> AOT-compiled jax.jit(fn) for its example args, compiled in parallel threads
    (XLA compiles outside the GIL; on a many-core host this saves minutes)."""
    lowered = {name: jax.jit(fn, donate_argnums=donate).lower(*args)
               for name, (fn, args) in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = {name: pool.submit(low.compile) for name, low in lowered.items()}
        return {name: f.result() for name, f in futures.items()}


def time_train(compiled, params, opt_state, inputs, labels, *, warmup: int,
               steps: int) -> float:
    """Seconds per step: `warmup` steps, then `steps` chained steps timed as one block."""
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))  # donated below
    for _ in range(warmup):
        params, opt_state, loss = compiled(params, opt_state, inputs, labels)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = compiled(params, opt_state, inputs, labels)
    jax.block_until_ready((params, loss))
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"train step loss is {float(loss)}")
    return (time.perf_counter() - start) / steps


def shape_fields(settings: Settings, size: str, depth: int | None) -> dict[str, Any]:
    """Transformer shape of a model: the named size, depth and the settings' overrides."""
    return dict(SIZES[size], **({} if depth is None else dict(depth=depth)),
                **dict(settings.shape_overrides))


def ast_model(settings: Settings, size: str, depth: int | None, *, frames: int,
              num_classes: int, dtype: str = "float32"):
    return create_ast(size, frames=frames, fstride=settings.stride, tstride=settings.stride,
                      num_mel_bins=MEL, num_classes=num_classes, dtype=dtype,
                      **shape_fields(settings, size, depth))


def tome_r(settings: Settings, model) -> int:
    """The ToMe r of the settings for this model ("half": the smallest even r that halves
    its MACs: an even r keeps an even token count in every block, which cuDNN attention
    needs when it carries ToMe's size bias; an odd r sends every other block to XLA)."""
    if settings.tome_r != "half":
        return int(settings.tome_r)
    r = bench.halving_tome_r(model)
    return r + r % 2  # one more merge per block only lowers the MACs further


def ast_variants(settings: Settings) -> dict[str, Any]:
    """label -> bf16 AST (baseline, ToMe at half the MACs, TopK)."""
    base = ast_model(settings, settings.size, settings.depth, frames=settings.frames,
                     num_classes=settings.num_classes, dtype="bfloat16")
    r = tome_r(settings, base)
    half = " (half MACs)" if settings.tome_r == "half" else ""
    return {"baseline": base,
            f"ToMe r={r}{half}": base.clone(tome_r=r),
            f"TopK keep={settings.keep_rate:g}": base.clone(
                    prune_keep_rate=settings.keep_rate,
                    prune_layers=tuple(settings.prune_layers))}


def attention_kernels(model, batch: int, backend: str | None = None) -> str:
    """Which kernel "auto" picks in each block of an AST on `backend` (default: this one),
    e.g. "cudnn x12"."""
    heads, head_dim = model.num_heads, model.width // model.num_heads
    prop = model.tome_prop_attn and any(lp.r > 0 for lp in model.token_plan())
    picks, merged = [], False
    for lp in model.token_plan():
        t = lp.tokens_in
        shape = (batch, t, heads, head_dim)
        picks.append(attention.choose_implementation(
                backend=backend or jax.default_backend(), q_shape=shape, k_shape=shape,
                dtype=jnp.dtype(model.dtype),
                bias_shape=(batch, 1, 1, t) if prop and merged else None))
        merged = merged or lp.r > 0 or (lp.keep is not None and model.prune_fuse)
    return ", ".join(f"{k} x{picks.count(k)}" for k in dict.fromkeys(picks))


def train_throughput(settings: Settings, peak: float | None, *, threads: int) -> list[dict]:
    rng = np.random.default_rng(settings.seed + 2)
    b = settings.train_batch
    x = jnp.asarray(rng.standard_normal((b, settings.frames, MEL), dtype=np.float32))
    y = jnp.asarray(rng.random((b, settings.num_classes)) < 0.05, jnp.float32)
    models = ast_variants(settings)
    params = jax.jit(models["baseline"].init)(jax.random.key(0), x[:1])["params"]
    jobs, opt = {}, {}
    for label, model in models.items():
        tx, step = bench.train_step_fn(
                lambda p, x, m=model: (m.apply({"params": p}, x), jnp.ones(len(x))))
        opt[label] = tx.init(params)
        jobs[label] = (step, (params, opt[label], x, y))
    start = time.perf_counter()
    compiled = compile_all(jobs, threads=threads, donate=(0, 1))
    log(f"compiled {len(jobs)} train steps in {time.perf_counter() - start:.0f} s")
    rows = []
    for label, model in models.items():
        seconds = time_train(compiled[label], params, opt[label], x, y,
                             warmup=settings.warmup, steps=settings.steps)
        macs = bench.ast_macs(model).total
        rate = b / seconds
        memory = compiled[label].memory_analysis()
        rows.append({"table": "train", "setting": label, "batch": b,
                     "GMACs/clip (fwd)": macs / 1e9, "clips/s": rate,
                     "MFU": bench.mfu(clips_per_s=rate, forward_macs=macs, peak_flops=peak,
                                      train=True),
                     "temp GiB": None if memory is None else memory.temp_size_in_bytes / 2 ** 30,
                     "attention": attention_kernels(model, b)})
        log(f"train {label}: {rate:.1f} clips/s")
    return rows


def forward_throughput(settings: Settings, peak: float | None, *, threads: int) -> list[dict]:
    rng = np.random.default_rng(settings.seed + 3)
    b = settings.forward_batch
    x = jnp.asarray(rng.standard_normal((b, settings.frames, MEL), dtype=np.float32))
    models = ast_variants(settings)
    params = jax.jit(models["baseline"].init)(jax.random.key(0), x[:1])["params"]
    compiled = compile_all({label: (lambda p, x, m=m: m.apply({"params": p}, x), (params, x))
                            for label, m in models.items()}, threads=threads)
    rows = []
    for label, model in models.items():
        timing = bench.measure_throughput(compiled[label], params, x, warmup=settings.warmup,
                                          repeats=settings.steps)
        macs = bench.ast_macs(model).total
        rate = timing.rate(b)
        rows.append({"table": "forward", "setting": label, "batch": b,
                     "GMACs/clip (fwd)": macs / 1e9, "clips/s": rate,
                     "MFU": bench.mfu(clips_per_s=rate, forward_macs=macs, peak_flops=peak,
                                      train=False),
                     "temp GiB": None, "attention": attention_kernels(model, b)})
        log(f"forward {label}: {rate:.1f} clips/s")
    return rows


def elastic_model(settings: Settings, size: str, depth: int | None, *, num_classes: int,
                  dtype: str = "float32") -> ElasticAST:
    return ElasticAST(num_classes=num_classes, frames=settings.pack_max_frames,
                      fstride=settings.stride, tstride=settings.stride, num_mel_bins=MEL,
                      pool="mean", dtype=jnp.dtype(dtype),
                      **shape_fields(settings, size, depth))


def packed_batch(settings: Settings, frames: np.ndarray, rng: np.random.Generator):
    """(the packed input dict of the first group of clips that fills the rows, its clips)."""
    samples = [packing.patchify(rng.standard_normal((int(n), MEL), dtype=np.float32),
                                fstride=settings.stride, tstride=settings.stride)
               for n in frames]
    group = packing.greedy_batches([len(s[0]) for s in samples], rows=settings.pack_rows,
                                   max_tokens=settings.pack_tokens,
                                   max_slots=settings.pack_slots)[0]
    batch = packing.pack([samples[i] for i in group], rows=settings.pack_rows,
                         max_tokens=settings.pack_tokens, max_slots=settings.pack_slots)
    return batch.arrays(), len(group)


def packed_vs_padded(settings: Settings, *, threads: int) -> list[dict]:
    """bf16 train clips/s: ElasticAST on packed rows vs AST on clips padded/cropped to
    pad_frames, the same FSDD-like clip lengths, the same width and depth."""
    rng = np.random.default_rng(settings.seed + 4)
    frames = fsdd_like_frames(rng, 4 * settings.pack_rows * settings.pack_slots,
                              max_frames=settings.pack_max_frames)
    batch, clips = packed_batch(settings, frames, rng)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    el = elastic_model(settings, settings.size, settings.depth,
                       num_classes=settings.pack_classes, dtype="bfloat16")
    ast = ast_model(settings, settings.size, settings.depth, frames=settings.pad_frames,
                    num_classes=settings.pack_classes, dtype="bfloat16")
    x = jnp.asarray(rng.standard_normal((settings.pad_batch, settings.pad_frames, MEL),
                                        dtype=np.float32))
    labels = {"packed": jnp.asarray(rng.random(batch["slot_index"].shape
                                               + (settings.pack_classes,)) < 0.1, jnp.float32),
              "padded": jnp.asarray(rng.random((settings.pad_batch, settings.pack_classes))
                                    < 0.1, jnp.float32)}
    inputs = {"packed": batch, "padded": x}
    params = {"packed": jax.jit(el.init)(jax.random.key(0), batch)["params"],
              "padded": jax.jit(ast.init)(jax.random.key(0), x[:1])["params"]}
    forwards = {"packed": lambda p, b: el.apply({"params": p}, b),
                "padded": lambda p, x: (ast.apply({"params": p}, x), jnp.ones(len(x)))}
    jobs, opt = {}, {}
    for k, fwd in forwards.items():
        tx, step = bench.train_step_fn(fwd)
        opt[k] = tx.init(params[k])
        jobs[k] = (step, (params[k], opt[k], inputs[k], labels[k]))
    compiled = compile_all(jobs, threads=threads, donate=(0, 1))
    real = float((np.asarray(batch["segment_ids"]) > 0).mean())
    tokens = settings.pad_batch * ast.token_plan()[0].tokens_in
    described = {
            "packed": (f"ElasticAST, {settings.pack_rows} rows x {settings.pack_tokens} tokens, "
                       f"{clips} clips, {real:.2f} real tokens", clips),
            "padded": (f"AST, {settings.pad_batch} clips padded to {settings.pad_frames} "
                       f"frames ({tokens} tokens)", settings.pad_batch)}
    rows = []
    for k in forwards:
        seconds = time_train(compiled[k], params[k], opt[k], inputs[k], labels[k],
                             warmup=settings.warmup, steps=settings.steps)
        label, n = described[k]
        rows.append({"table": "packed", "setting": label, "batch": n, "clips/s": n / seconds})
        log(f"train {k}: {n / seconds:.1f} clips/s")
    return rows


# --------------------------------------------------------------------------------- report

def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if np.isnan(v):
            return "-"
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.3f}"
    return str(v)


def markdown(env: dict[str, str], numerics: list[dict], rows: list[dict]) -> str:
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()]

    def table(title, items, columns):
        if not items:
            return
        lines.extend(["", f"**{title}**", "", "| " + " | ".join(columns) + " |",
                      "|---" * len(columns) + "|"])
        for item in items:
            lines.append("| " + " | ".join(_fmt(item.get(c)) for c in columns) + " |")

    if numerics:
        table("Numerics (bf16 unless named; max over real rows)", numerics, list(numerics[0]))
    cols = ["setting", "batch", "GMACs/clip (fwd)", "clips/s", "MFU", "temp GiB", "attention"]
    table("Train step (bf16 compute, f32 params / softmax / loss, AdamW)",
          [r for r in rows if r["table"] == "train"], cols)
    table("Forward", [r for r in rows if r["table"] == "forward"], cols[:5] + cols[6:])
    table("Packed vs padded train step (FSDD-like lengths)",
          [r for r in rows if r["table"] == "packed"], ["setting", "batch", "clips/s"])
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    reason = cudnn_probe()
    if reason is not None:
        print(f"cuDNN attention skipped: {reason}", flush=True)
    candidate = "cudnn" if reason is None else "chunked"
    env = environment(settings, reason)
    peak = bench.peak_bf16_flops(jax.devices()[0].device_kind)
    numerics, rows = [], []

    def report():
        env["wall seconds so far"] = f"{time.perf_counter() - start:.0f}"
        text = markdown(env, numerics, rows)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        return text

    def run(section: str, impl: str) -> None:
        with attention.default_implementation(impl):
            if section == "numerics":
                numerics.extend(attention_numerics(settings, candidate)
                                + logits_numerics(settings, candidate))
            elif section == "train":
                rows.extend(train_throughput(settings, peak, threads=args.compile_threads))
            elif section == "forward":
                rows.extend(forward_throughput(settings, peak, threads=args.compile_threads))
            elif section == "packed":
                rows.extend(packed_vs_padded(settings, threads=args.compile_threads))

    # A GPU whose cuDNN attention fails: "auto" must not pick it in the other sections.
    impl = "xla" if reason is not None and jax.default_backend() == "gpu" else "auto"
    for section in args.sections:
        t0 = time.perf_counter()
        try:
            run(section, impl)
        except Exception as e:  # one-shot GPU run: keep going, say what failed
            if args.smoke:
                raise
            env[f"{section} failed ({impl})"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(traceback.format_exc())
            if impl == "auto" and section != "numerics":
                log(f"{section}: retrying with the XLA attention everywhere")
                count = len(rows)
                try:
                    run(section, "xla")
                    for row in rows[count:]:
                        row["attention"] = "xla (fallback)"
                except Exception as e2:
                    env[f"{section} failed (xla)"] = f"{type(e2).__name__}: {str(e2)[:300]}"
                    log(traceback.format_exc())
        log(f"{section} done in {time.perf_counter() - t0:.0f} s")
        report()
    text = report()
    print(text)
    return dict(env=env, numerics=numerics, rows=rows, candidate=candidate)


if __name__ == "__main__":
    main()
