"""MAC counting and throughput measurement (shared by benchmarks/ and evaluation).

`ast_macs` counts multiply-accumulates analytically from an AST configuration and its static
per-block token plan (ToMe merges and TopK pruning change the token count between attention
and MLP of a block). Elementwise work (LayerNorm, GELU, softmax, residual adds, the ToMe
weighted average and TopK gather) is not counted: it is memory traffic, not MACs, and is a
few percent of XLA's flop count (`tests/test_bench.py` checks the tolerance).

`measure_throughput` times a compiled function (median of repeats after warm-up, every call
blocked until ready), `measure_interleaved` several against each other (interleaved rounds); `compiled_memory` reads XLA's compiled memory analysis. `train_step_fn`
is the one benchmark training step (benchmarks/throughput.py and device_check.py), and
`peak_bf16_flops` / `mfu` turn a step rate into model-FLOPs utilisation.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fast_ast_jax.patches import patch_shape

# Counted parts, in the order `ast_macs` reports them.
PARTS = ("patch_embed", "qkv", "attn_scores", "attn_values", "attn_out", "mlp",
         "tome_match", "topk_cls_attn", "head")


@dataclasses.dataclass(frozen=True)
class LayerTokens:
    """Static token counts of one block: attention runs on `tokens_in` tokens, the MLP on
    `tokens_out`; `matched` tokens enter ToMe's bipartite matching (0 = no merge) and
    `cls_queries` class-token queries score TopK pruning (0 = no pruning). `queries` (0 =
    all `tokens_in`) is set for a last block that computes only the prefix tokens
    (`AST.prefix_only_last_block`): they alone query, and only they go through the out
    projection and the MLP."""

    tokens_in: int
    tokens_out: int
    matched: int = 0
    cls_queries: int = 0
    queries: int = 0


@dataclasses.dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass of one clip.

    total: sum of all parts. parts: MACs per part (`PARTS`). layers: the token plan used.
    """

    total: int
    parts: dict[str, int]
    layers: tuple[LayerTokens, ...]

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def layer_tokens(model: Any, *, frames: int) -> tuple[LayerTokens, ...]:
    """Per-block token counts of an AST for inputs of `frames` frames.

    Uses the model's static token plan (`model.token_plan(frames)`: ToMe and TopK) when the
    model has one; a model without token reduction keeps all tokens in every block.
    """
    f_dim, t_dim = model.grid(frames)
    tokens = model.num_prefix + f_dim * t_dim
    if not hasattr(model, "token_plan"):
        return tuple(LayerTokens(tokens, tokens) for _ in range(model.depth))
    queries = 2 if getattr(model, "prune_score", "cls") == "cls_dist" else 1
    out = []
    plans = model.token_plan(frames)
    prefix_only = model.prefix_only_last_block()
    for i, plan in enumerate(plans):
        after_prune = plan.tokens_in
        if plan.keep is not None:
            after_prune = model.num_prefix + plan.keep + int(model.prune_fuse)
        last = prefix_only and i == len(plans) - 1
        out.append(LayerTokens(
                tokens_in=plan.tokens_in, tokens_out=plan.tokens_out,
                matched=after_prune if plan.r > 0 else 0,
                cls_queries=queries if plan.keep is not None else 0,
                queries=model.num_prefix if last else 0))
    return tuple(out)


def ast_macs(model: Any, *, frames: int | None = None) -> MacCount:
    """Analytical MACs of one AST forward pass on one clip of `frames` frames.

    Per block with T tokens into attention and T' into the MLP (W width, H heads, D = W/H):
        qkv 3·T·W², scores T²·W (QKᵀ over all heads), values T²·W (softmax·V),
        out proj T·W², MLP 2·T'·W·mlp_dim; a prefix-only last block (`LayerTokens.queries`
        = Q) has scores and values Q·T·W, out proj Q·W², MLP 2·Q·W·mlp_dim,
        ToMe matching ⌈n/2⌉·⌊n/2⌋·D for the n tokens it matches (cosine scores of set A
        against set B on head-averaged keys), TopK class attention Q·T·W for the Q
        class-token queries whose attention ranks the patches.
    Plus patch embedding (patches · ph·pw · W for ph x pw patches; one input channel) and
    the head (W · classes).
    Biases, LayerNorm, GELU, softmax and residual adds are not counted.

    Args:
        model: an `AST` (any size / reduction settings).
        frames: input frames (default: the model's `frames`).

    Returns:
        MacCount with the total, a per-part breakdown and the per-block token counts.
    """
    frames = model.frames if frames is None else frames
    w, mlp, heads = model.width, model.mlp_dim, model.num_heads
    head_dim = w // heads
    f_dim, t_dim = model.grid(frames)
    layers = layer_tokens(model, frames=frames)
    parts = dict.fromkeys(PARTS, 0)
    ph, pw = patch_shape(model.patch_size)
    parts["patch_embed"] = f_dim * t_dim * ph * pw * w
    for lt in layers:
        t, q = lt.tokens_in, lt.queries or lt.tokens_in
        parts["qkv"] += 3 * t * w * w
        parts["attn_scores"] += q * t * w
        parts["attn_values"] += q * t * w
        parts["attn_out"] += q * w * w
        parts["mlp"] += 2 * (q if lt.queries else lt.tokens_out) * w * mlp
        parts["tome_match"] += math.ceil(lt.matched / 2) * (lt.matched // 2) * head_dim
        parts["topk_cls_attn"] += lt.cls_queries * t * w
    parts["head"] = w * model.num_classes
    return MacCount(total=sum(parts.values()), parts=parts, layers=layers)


def tome_r_for(model: Any, *, mac_ratio: float, frames: int | None = None) -> int:
    """Smallest constant ToMe r whose MACs (`ast_macs`) are at most 1 / `mac_ratio` of the
    model's without token reduction (e.g. 2: "ToMe at half the MACs")."""
    plain = model.clone(tome_r=0, prune_keep_rate=1.0)
    base = ast_macs(plain, frames=frames).total
    tokens = layer_tokens(plain, frames=frames or plain.frames)[0].tokens_in
    for r in range(1, tokens // 2 + 1):
        if ast_macs(plain.clone(tome_r=r), frames=frames).total * mac_ratio <= base:
            return r
    raise ValueError(f"no constant ToMe r cuts the MACs of this {plain.depth}-block model at "
                     f"{frames or plain.frames} frames {mac_ratio:g}x; use more blocks or "
                     "frames")


def halving_tome_r(model: Any, *, frames: int | None = None) -> int:
    """`tome_r_for` at half the MACs (the "ToMe at half the MACs" setting of the
    benchmarks)."""
    return tome_r_for(model, mac_ratio=2.0, frames=frames)


def xla_flops(fn: Callable, *args) -> float:
    """Flops XLA's cost analysis reports for `jax.jit(fn)(*args)` (compiled)."""
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per device
        cost = cost[0]
    return float(cost["flops"])


def compiled_memory(fn: Callable, *args) -> dict[str, int]:
    """XLA's compiled memory analysis of `jax.jit(fn)(*args)`, in bytes.

    Returns temp (intermediates the program allocates: activations kept for the backward
    pass, workspace), argument, output and generated-code sizes.
    """
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    return dict(temp=int(stats.temp_size_in_bytes),
                argument=int(stats.argument_size_in_bytes),
                output=int(stats.output_size_in_bytes),
                code=int(stats.generated_code_size_in_bytes))


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of `repeats` calls (after warm-up); `median` is the statistic."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def rate(self, items: int) -> float:
        """Items per second at the median time (e.g. clips/s for a batch of `items`)."""
        return items / self.median

    @property
    def spread(self) -> float:
        """How much the repeats vary: interquartile range over the median (0 for < 2)."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q3 - q1) / self.median


def measure_throughput(fn: Callable, *args, warmup: int = 1, repeats: int = 3) -> Timing:
    """Times `fn(*args)` (e.g. a jitted or AOT-compiled function), blocking on its outputs.

    The first warm-up call also compiles a jitted function; its time is not counted.
    """
    return measure_interleaved({"fn": lambda: fn(*args)}, warmup=warmup,
                               repeats=repeats)["fn"]


# Interleaved rounds (median) when models of one run are compared by clips/s (the
# evaluate sweep, the recipe's table): a stabler ratio on a shared machine, ~5 s for the
# demo's 4 settings.
TIMING_ROUNDS = 7


def measure_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1,
                        repeats: int = 3, log: Callable[[str], None] | None = None
                        ) -> dict[str, Timing]:
    """Times several calls against each other: all warmed up (and so compiled) first, then
    `repeats` rounds of one call of each, every call blocked until ready, so that every
    timing sees the same machine load; a ratio of medians compares them fairly.

    fns: name -> a call without arguments. log: told of each warm-up and round.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"timing needs warmup >= 0 and repeats >= 1, got "
                         f"warmup={warmup}, repeats={repeats}")
    for name, fn in fns.items():
        if log:
            log(f"warm-up {name}")
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
        if log:
            log(f"round {i + 1}/{repeats}: " + ", ".join(
                    f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    return {name: Timing(tuple(t)) for name, t in times.items()}


# Dense (no sparsity) bf16 matrix peaks in FLOP/s by device kind, from the vendors' datasheets:
# (substring of jax.Device.device_kind, peak). First match wins, so specific names go first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # the H100's rates with more memory (SXM)
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
)


def peak_bf16_flops(device_kind: str) -> float | None:
    """The dense bf16 peak (FLOP/s) of a device kind from `PEAK_BF16_FLOPS`, or None when
    the kind is not in the table (MFU is then reported as unknown, not guessed)."""
    for name, peak in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def mfu(*, clips_per_s: float, forward_macs: int, peak_flops: float | None,
        train: bool) -> float | None:
    """Model-FLOPs utilisation: achieved model FLOP/s over the peak.

    Model FLOPs per clip are 2 * forward MACs for a forward pass and 3x that for a training
    step (backward = 2 forwards), counted from the model's own token plan (`ast_macs`), so
    ToMe / TopK are credited only with the work they still do. None when the peak is unknown.
    """
    if peak_flops is None:
        return None
    flops = 2 * forward_macs * (3 if train else 1)
    return clips_per_s * flops / peak_flops


def train_step_fn(forward: Callable, *, learning_rate: float = 1e-4):
    """The benchmark training step: AdamW on a float32 sigmoid cross-entropy.

    Args:
        forward: (params, inputs) -> (logits (..., C), weights (...)) with weights 1 for the
            real clips (padded batches: all; packed rows: the filled slots).

    Returns:
        (tx, step) with step(params, opt_state, inputs, labels (..., C)) -> (params,
        opt_state, loss); jit it (donate params and opt_state to update in place).
    """
    tx = optax.adamw(learning_rate, weight_decay=1e-4)

    def loss_fn(params, inputs, labels):
        logits, weights = forward(params, inputs)
        per_clip = optax.sigmoid_binary_cross_entropy(
                logits.astype(jnp.float32), labels.astype(jnp.float32)).mean(axis=-1)
        weights = weights.astype(jnp.float32)
        return (per_clip * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    def step(params, opt_state, inputs, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, step


# Above this 1-minute load average other processes share the cores, so timings are not the
# machine's (a 2-core run at load 6-8 once overstated JAX/PyTorch by 2.2x).
MAX_LOAD = 1.5


def machine_load() -> tuple[str, float]:
    """(`uptime`'s line, the 1-minute load average): printed next to every timing table."""
    load = os.getloadavg()[0]
    try:
        text = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    return text.strip() or f"load average: {load:.2f}", load


def may_write(load: float, *, allow_load: bool) -> bool:
    """Whether timings taken at this 1-minute load may be written as results."""
    return allow_load or load <= MAX_LOAD


def refuse_loaded_results(out, *, allow_load: bool) -> tuple[str, float]:
    """machine_load(), after checking that a results file `out` (None: none) may be written
    at this load; raises SystemExit naming the load and what to do otherwise."""
    line, load = machine_load()
    if out is not None and not may_write(load, allow_load=allow_load):
        raise SystemExit(
            f"1-minute load average is {load:.2f} > {MAX_LOAD}: other processes share the "
            f"cores, so the figures for {out} would not be the machine's. Wait until "
            f"`uptime` shows a load below {MAX_LOAD}, or pass --allow-load (then the "
            f"table header records the load).")
    return line, load

