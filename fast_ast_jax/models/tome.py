"""Token merging (ToMe, Bolya et al. 2023) as pure JAX functions with static shapes.

Written from the description in docs/REFERENCES.md §4 (ToMe, arXiv 2210.09461; its code is
CC-BY-NC and is not used). The number of merges per layer is a Python int fixed at trace
time, so every layer outputs a fixed, smaller token count and the arrays really shrink
under `jax.jit`.

Conventions: tokens are (B, T, C); `size` (B, T, 1) counts the original tokens a token
represents; `source` (B, T, T0) is the 0/1 map from current to original tokens.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

MergeFn = Callable[..., jax.Array]
MERGE_MODES = ("sum", "mean", "amax")


def check_merge_input(x, *, mode: str, planned: tuple[int, int], axes: str) -> None:
    """The checks of a planned merge function (here and models.packed_reduce): a known
    `mode`, and x's leading (`axes`) shape the `planned` one."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode {mode!r} is not one of {MERGE_MODES}")
    if x.shape[:2] != planned:
        raise ValueError(f"merge planned for ({axes}) = {planned}, got x of shape {x.shape}")


def _identity(x: jax.Array, mode: str = "mean") -> jax.Array:
    del mode
    return x


def bipartite_soft_matching(
        metric: jax.Array,
        *,
        r: int,
        class_token: bool = False,
        distill_token: bool = False,
) -> MergeFn:
    """ToMe's bipartite soft matching: plan the merge of r tokens.

    Tokens at even positions form set A, odd positions set B. Every A token picks its most
    similar B token (cosine similarity of `metric`); the r A tokens with the highest best
    score are merged into their partners. CLS (token 0, in A) is never merged away and DIST
    (token 1, in B) never receives merges.

    Args:
        metric: (B, T, C) matching features (ToMe: keys averaged over heads). Gradients are
            stopped: the matching is a discrete decision.
        r: tokens to remove; clamped to (T - protected) // 2. r <= 0 gives identities.
        class_token: token 0 is a class token (protected, kept first).
        distill_token: token 1 is a distillation token (protected, kept second).

    Returns:
        merge(x, mode="mean"): (B, T, D) -> (B, T - r, D), modes "sum", "mean" (plain mean
            of a destination and its sources), "amax". Output order: CLS, DIST, unmerged A
            tokens (original order when class_token, else by descending score), B tokens.
    """
    b, t, _ = metric.shape
    protected = int(class_token) + int(distill_token)
    r = min(int(r), (t - protected) // 2)
    if r <= 0:
        return _identity

    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    # Plain division, no epsilon, as the reference.
    metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
    a, bside = metric[:, ::2], metric[:, 1::2]
    num_b = bside.shape[1]
    scores = jnp.einsum("bic,bjc->bij", a, bside)
    if class_token:
        scores = scores.at[:, 0, :].set(-jnp.inf)
    if distill_token:
        scores = scores.at[:, :, 0].set(-jnp.inf)
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)
    # Stable descending sort; -inf rows become +inf and sort last, as in torch.
    edge_idx = jnp.argsort(-node_max, axis=-1)
    src_idx = edge_idx[:, :r]  # (B, r) A tokens merged away
    unm_idx = edge_idx[:, r:]  # (B, num_a - r) A tokens kept
    if class_token:
        unm_idx = jnp.sort(unm_idx, axis=-1)
    dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=-1)  # (B, r) B partners
    batch = jnp.arange(b)[:, None]

    def merge(x: jax.Array, mode: str = "mean") -> jax.Array:
        check_merge_input(x, mode=mode, planned=(b, t), axes="batch, tokens")
        src_side, dst = x[:, ::2], x[:, 1::2]
        unm = jnp.take_along_axis(src_side, unm_idx[..., None], axis=1)
        src = jnp.take_along_axis(src_side, src_idx[..., None], axis=1)
        # Batched scatter (duplicates accumulate): on CPU 3x faster forward and 1.4x faster
        # backward than a one-hot einsum (B=4, T=1214, D=768, r=100).
        if mode == "amax":
            dst = dst.at[batch, dst_idx].max(src)
        else:
            dst = dst.at[batch, dst_idx].add(src)
            if mode == "mean":
                # torch scatter_reduce(include_self=True): divide by 1 + number of sources.
                count = jnp.ones((b, num_b), x.dtype).at[batch, dst_idx].add(1)
                dst = dst / count[..., None]
        if distill_token:
            return jnp.concatenate([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], axis=1)
        return jnp.concatenate([unm, dst], axis=1)

    return merge


def merge_wavg(merge: MergeFn, x: jax.Array,
               size: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Size-weighted average merge.

    Args:
        merge: from `bipartite_soft_matching`.
        x: (B, T, D) tokens.
        size: (B, T, 1) float32 token sizes; None means all ones.

    Returns:
        (x (B, T', D) in x's dtype, size (B, T', 1) float32). Accumulates in float32.
    """
    if size is None:
        size = jnp.ones(x.shape[:2] + (1,), jnp.float32)
    xf = x.astype(jnp.float32)
    total = merge(xf * size, mode="sum")
    size = merge(size, mode="sum")
    return (total / size).astype(x.dtype), size


def merge_source(merge: MergeFn, x: jax.Array,
                 source: jax.Array | None = None) -> jax.Array:
    """Track which original tokens each token holds.

    Args:
        merge: from `bipartite_soft_matching`.
        x: (B, T, D) the tokens being merged (only their shape is used).
        source: (B, T, T0) 0/1 map; None means the identity (T0 = T).

    Returns:
        (B, T', T0) 0/1 map after the merge.
    """
    if source is None:
        b, t = x.shape[:2]
        source = jnp.broadcast_to(jnp.eye(t, dtype=jnp.float32), (b, t, t))
    return merge(source, mode="amax")


SCHEDULE_FORMS = ("an int r (r merges in every block)",
                  "'ramp:R,INFLECTION' (ToMe's linear schedule of mean R, INFLECTION in "
                  "[-1, 1]: -1 decreases from 2R to 0, +1 increases)",
                  "'blocks:R0,R1,...' (explicit merges per block, missing blocks 0)")


def parse_schedule(spec: int | str, *, depth: int) -> list[int]:
    """Per-block ToMe merge counts from a schedule spec (before the per-block clamp).

    One type, read the same way from Python, a config file and the command line:
        int r, or the string "r"      -> [r] * depth (docs/REFERENCES.md §4);
        "ramp:R,INFLECTION"           -> ToMe's parse_r((R, INFLECTION)): a linear ramp of
                                         mean R, INFLECTION in [-1, 1];
        "blocks:R0,R1,...,Rk"         -> [R0, ..., Rk] + [0] * (depth - k - 1).
    Tuples and lists are refused: ToMe reads a 2-tuple as (r, inflection), which made a
    2-block list [16, 0] ambiguous; the tag names the form instead.

    Raises:
        ValueError naming the spec and the accepted forms.
    """
    def fail(why: str) -> ValueError:
        return ValueError(f"ToMe schedule {spec!r}: {why}; use " + ", ".join(SCHEDULE_FORMS))

    if isinstance(spec, str):
        text = spec.strip()
        kind, _, body = text.rpartition(":")
        try:
            values = [v.strip() for v in body.split(",")]
            if kind == "":
                if len(values) != 1:
                    raise fail("several values need a 'ramp:' or 'blocks:' tag")
                return parse_schedule(int(values[0]), depth=depth)
            if kind == "ramp":
                if len(values) != 2:
                    raise fail("'ramp:' takes R,INFLECTION")
                r, inflect = int(values[0]), float(values[1])
            elif kind == "blocks":
                rs = [int(v) for v in values]
            else:
                raise fail(f"unknown tag {kind!r}")
        except ValueError as e:
            if str(e).startswith("ToMe schedule"):
                raise
            raise fail("not a number") from None
        if kind == "blocks":
            if len(rs) > depth:
                raise fail(f"{len(rs)} entries for a model of depth {depth}")
            if min(rs) < 0:
                raise fail("merges must be >= 0")
            return rs + [0] * (depth - len(rs))
        if r < 0 or not -1 <= inflect <= 1:
            raise fail("R must be >= 0 and INFLECTION in [-1, 1]")
        low = int(r * (1.0 - inflect))
        step = (2 * r - 2 * low) / (depth - 1) if depth > 1 else 0.0
        return [int(low + step * i) for i in range(depth)]
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 0:
            raise fail("merges must be >= 0")
        return [spec] * depth
    raise fail(f"a {type(spec).__name__} is not a schedule")


def clamp_r(num_tokens: int, r: int, protected: int) -> int:
    """Merges actually done on num_tokens tokens (the matcher's clamp, never negative)."""
    return max(0, min(int(r), (num_tokens - protected) // 2))
