"""MAC counting and throughput measurement (shared by benchmarks/ and evaluation).

`ast_macs` counts multiply-accumulates analytically from an AST configuration and its static
per-block token plan (ToMe merges and TopK pruning change the token count between attention
and MLP of a block). Elementwise work (LayerNorm, GELU, softmax, residual adds, the ToMe
weighted average and TopK gather) is not counted: it is memory traffic, not MACs, and is a
few percent of XLA's flop count (`tests/test_bench.py` checks the tolerance).

`measure_throughput` times a compiled function (median of repeats after warm-up, every call
blocked until ready); `compiled_memory` reads XLA's compiled memory analysis.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable

import jax

# Counted parts, in the order `ast_macs` reports them.
PARTS = ("patch_embed", "qkv", "attn_scores", "attn_values", "attn_out", "mlp",
         "tome_match", "topk_cls_attn", "head")


@dataclasses.dataclass(frozen=True)
class LayerTokens:
    """Static token counts of one block: attention runs on `tokens_in` tokens, the MLP on
    `tokens_out`; `matched` tokens enter ToMe's bipartite matching (0 = no merge) and
    `cls_queries` class-token queries score TopK pruning (0 = no pruning)."""

    tokens_in: int
    tokens_out: int
    matched: int = 0
    cls_queries: int = 0


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
    for plan in model.token_plan(frames):
        after_prune = plan.tokens_in
        if plan.keep is not None:
            after_prune = model.num_prefix + plan.keep + int(model.prune_fuse)
        out.append(LayerTokens(
                tokens_in=plan.tokens_in, tokens_out=plan.tokens_out,
                matched=after_prune if plan.r > 0 else 0,
                cls_queries=queries if plan.keep is not None else 0))
    return tuple(out)


def ast_macs(model: Any, *, frames: int | None = None) -> MacCount:
    """Analytical MACs of one AST forward pass on one clip of `frames` frames.

    Per block with T tokens into attention and T' into the MLP (W width, H heads, D = W/H):
        qkv 3·T·W², scores T²·W (QKᵀ over all heads), values T²·W (softmax·V),
        out proj T·W², MLP 2·T'·W·mlp_dim,
        ToMe matching ⌈n/2⌉·⌊n/2⌋·D for the n tokens it matches (cosine scores of set A
        against set B on head-averaged keys), TopK class attention Q·T·W for the Q
        class-token queries whose attention ranks the patches.
    Plus patch embedding (patches · 16² · W; one input channel) and the head (W · classes).
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
    parts["patch_embed"] = f_dim * t_dim * model.patch_size ** 2 * w
    for lt in layers:
        t = lt.tokens_in
        parts["qkv"] += 3 * t * w * w
        parts["attn_scores"] += t * t * w
        parts["attn_values"] += t * t * w
        parts["attn_out"] += t * w * w
        parts["mlp"] += 2 * lt.tokens_out * w * mlp
        parts["tome_match"] += math.ceil(lt.matched / 2) * (lt.matched // 2) * head_dim
        parts["topk_cls_attn"] += lt.cls_queries * t * w
    parts["head"] = w * model.num_classes
    return MacCount(total=sum(parts.values()), parts=parts, layers=layers)


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


def measure_throughput(fn: Callable, *args, warmup: int = 1, repeats: int = 3) -> Timing:
    """Times `fn(*args)` (e.g. a jitted or AOT-compiled function), blocking on its outputs.

    The first warm-up call also compiles a jitted function; its time is not counted.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"measure_throughput needs warmup >= 0 and repeats >= 1, got "
                         f"warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return Timing(tuple(times))
