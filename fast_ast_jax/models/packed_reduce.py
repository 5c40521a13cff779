"""Token merging (ToMe) and TopK pruning inside packed rows, with static shapes.

A packed row holds several samples (segment ids 1..S) and padding (segment 0). Reducing
tokens there must never mix samples, must keep every sample alive, and must remove a fixed,
Python-int number of tokens per row so the arrays really shrink under `jax.jit`.

Rules (docs/ELASTIC.md, "A clip's reduction depends on the clip alone"):

- Segment-local bipartite split. Inside each sample, tokens alternate between set A (even
  rank within the sample: 0, 2, 4, ...) and set B (odd rank), like ToMe's split of a single
  sample. An A token may only match a B token of its own sample (other scores are -inf).
  Padding never merges. A merged token keeps its destination's segment id.
- Per-clip quotas, a function of the clip's own token count and the schedule only. In a
  block whose rows hold T tokens (static) and whose schedule says r merges per row, the
  merge fraction is f = r_c / T with r_c = min(r, T // 2); a clip of n tokens merges
  q(n) = ceil(n * r_c / T) of its A tokens (0 when n < 2; q(n) <= ceil(n / 2), its A
  count). TopK keeps ceil(keep_rate * n) of a clip's n tokens (>= 1). Neither depends on
  the slot, the neighbours, or how full the row is, so a clip's prediction does not
  depend on where the packer put it.
- Padding absorbs the static remainder. A row shrinks by the static
  `row_merge_count(T, r, S)` = r_c - floor(r_c * S / T) tokens (ToMe) or to the static
  `row_keep_count(T, keep_rate, S)` = min(T, ceil(keep_rate * T) + S) tokens (TopK). These
  are the most that every packing of <= S clips into T tokens can give: the surviving real
  tokens always fit (ToMe: a row's clips merge >= f * (their tokens) - r_c * S / T, at
  most r_c * S / T lost to 1-token clips; TopK: ceil adds < 1 per clip). The places left
  over are padding: input padding tokens first, then merged-away or pruned tokens
  relabelled as padding (segment 0), in row order; padding is masked everywhere, so its
  values never reach a clip.
- Within a clip, its q A tokens with the most similar partner (cosine of the metric) merge,
  as in ToMe; TopK keeps its most important tokens. Importance = attention a token receives
  from the queries of its own sample, averaged over heads (the Audio-MAE variant of
  the TopK pruning paper, arXiv 2504.01690; packed rows have no CLS token).
- Order. Surviving tokens keep their relative row order (stable compaction), so a sample's
  token order does not depend on its row-mates.

Every plan returns a `reduce(x, mode)` with the contract of `tome.bipartite_soft_matching`'s
merge, so `tome.merge_wavg` and `tome.merge_source` apply unchanged.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from fast_ast_jax.models.attention import class_attention
from fast_ast_jax.models.tome import check_merge_input

ReduceFn = Callable[..., jax.Array]


def segment_mask(seg_q: jax.Array, seg_k: jax.Array) -> jax.Array:
    """Packed attention mask: a query sees the keys of its own sample, never padding.

    Args:
        seg_q: (R, Tq) int segment ids (0 = padding).
        seg_k: (R, Tk) int segment ids.

    Returns:
        (R, 1, Tq, Tk) bool, broadcast over heads.
    """
    return ((seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] > 0))[:, None]


def row_merge_count(num_tokens: int, r: int, num_slots: int) -> int:
    """Tokens a packed row of `num_tokens` tokens and `num_slots` slots loses to ToMe in a
    block scheduled for r merges per row (static; the module docstring proves it fits)."""
    r = max(0, min(int(r), num_tokens // 2))
    return r - (r * num_slots) // num_tokens


def row_keep_count(num_tokens: int, keep_rate: float, num_slots: int) -> int:
    """Tokens a packed row keeps after TopK pruning (static)."""
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"prune keep_rate={keep_rate} must be in (0, 1]")
    if keep_rate >= 1.0:
        return num_tokens
    return min(num_tokens, math.ceil(keep_rate * num_tokens) + num_slots)


def _segment_counts(seg: jax.Array, num_slots: int) -> jax.Array:
    """(R, T) ids -> (R, S + 1) token counts per segment (index 0 = padding)."""
    return jax.nn.one_hot(seg, num_slots + 1, dtype=jnp.int32).sum(axis=1)


def _rank_in_segment(seg: jax.Array) -> jax.Array:
    """(R, T) -> (R, T) number of earlier tokens of the same segment."""
    t = seg.shape[1]
    earlier = jnp.tril(jnp.ones((t, t), bool), k=-1)  # [i, j]: j < i
    same = seg[:, :, None] == seg[:, None, :]
    return (same & earlier).sum(axis=-1)


def _fill_with_padding(real: jax.Array, spare: jax.Array, count: int) -> jax.Array:
    """Indices (R, count), in row order, of every `real` token plus the first spare ones.

    real, spare: (R, T) bool, disjoint; the caller guarantees real.sum(1) <= count <=
    (real | spare).sum(1). Spare tokens fill the static remainder as padding.
    """
    free = count - real.sum(axis=1, keepdims=True)
    spare_rank = jnp.cumsum(spare, axis=1) - 1
    return _compact(real | (spare & (spare_rank < free)), count)


def _rank_by_score(score: jax.Array, seg: jax.Array, candidate: jax.Array) -> jax.Array:
    """Rank of each candidate among the candidates of its segment, best score first.

    Ties go to the earlier token. score, seg, candidate: (R, T) -> (R, T) int.
    """
    t = seg.shape[1]
    si, sj = score[:, :, None], score[:, None, :]
    idx = jnp.arange(t)
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j before i
    better = (sj > si) | ((sj == si) & earlier[None])
    same = (seg[:, :, None] == seg[:, None, :]) & candidate[:, None, :]
    return (better & same).sum(axis=-1)


def _compact(keep: jax.Array, count: int) -> jax.Array:
    """(R, T) bool with `count` True per row -> (R, count) their indices in row order."""
    return jnp.argsort(~keep, axis=1, stable=True)[:, :count]


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def packed_bipartite_matching(
        metric: jax.Array,
        segment_ids: jax.Array,
        *,
        r: int,
        num_slots: int,
) -> tuple[ReduceFn, jax.Array]:
    """Plan ToMe merges inside packed rows (see the module docstring for the rules).

    Args:
        metric: (R, T, C) matching features (keys averaged over heads); gradients stopped.
        segment_ids: (R, T) int, 1..num_slots per sample, 0 = padding.
        r: the block's merges per row (schedule); clip quotas and the static row count
            follow from it (module docstring).
        num_slots: S, the most samples a row can hold.

    Returns:
        merge(x, mode="mean"): (R, T, D) -> (R, T - row_merge_count(T, r, S), D), modes
            "sum", "mean" (plain mean of a destination and its sources) and "amax", like
            ToMe's merge;
        segment ids of the output tokens (0 = padding, incl. places left by merges).
    """
    rows, t, _ = metric.shape
    r = max(0, min(int(r), t // 2))
    out_tokens = t - row_merge_count(t, r, num_slots)
    if r == 0:
        return (lambda x, mode="mean": x), segment_ids

    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
    rank = _rank_in_segment(segment_ids)
    real = segment_ids > 0
    is_a, is_b = real & (rank % 2 == 0), real & (rank % 2 == 1)
    valid = (is_a[:, :, None] & is_b[:, None, :]
             & (segment_ids[:, :, None] == segment_ids[:, None, :]))
    scores = jnp.einsum("ric,rjc->rij", metric, metric)
    scores = jnp.where(valid, scores, -jnp.inf)
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1)
    candidate = jnp.isfinite(node_max)  # A tokens with a partner in their segment

    counts = _segment_counts(segment_ids, num_slots)
    quota = jnp.where(counts >= 2, -(-counts * r // t), 0).at[:, 0].set(0)  # ceil(n r / T)
    order = _rank_by_score(jnp.where(real, node_max, 0.0), segment_ids, candidate)
    merged = candidate & (order < jnp.take_along_axis(quota, segment_ids, axis=1))
    dst = jnp.where(merged, node_idx, jnp.arange(t)[None])
    survivor = real & ~merged
    keep_idx = _fill_with_padding(survivor, ~survivor, out_tokens)
    new_seg = jnp.take_along_axis(jnp.where(survivor, segment_ids, 0), keep_idx, axis=1)
    batch = jnp.arange(rows)[:, None]

    def merge(x: jax.Array, mode: str = "mean") -> jax.Array:
        check_merge_input(x, mode=mode, planned=(rows, t), axes="rows, tokens")
        count = jnp.zeros((rows, t), x.dtype).at[batch, dst].add(1)
        count = count.reshape(count.shape + (1,) * (x.ndim - 2))
        if mode == "amax":
            out = jnp.full_like(x, -jnp.inf).at[batch, dst].max(x)
        else:
            out = jnp.zeros_like(x).at[batch, dst].add(x)
            if mode == "mean":
                out = out / jnp.maximum(count, 1)
        # A merged-away place kept as padding holds its own value ("sum" / "mean": so its
        # size stays > 0 and log(size) finite) or, for "amax" (sources), nothing.
        out = jnp.where(count > 0, out, 0 if mode == "amax" else x)
        return _take(out, keep_idx)

    return merge, new_seg


def received_attention(q: jax.Array, k: jax.Array, segment_ids: jax.Array, *,
                       bias: jax.Array | None = None) -> jax.Array:
    """Importance of each token: attention it receives from its own sample's queries.

    Args:
        q, k: (R, T, H, D) queries and keys of the block.
        segment_ids: (R, T).
        bias: optional (R, 1, 1, T) key bias (log size under proportional attention).

    Returns:
        (R, T) float32: sum over the sample's queries of the head-averaged probabilities.
    """
    mask = segment_mask(segment_ids, segment_ids)
    real_q = (segment_ids > 0)[:, None, :, None]

    def one_head(qk):
        # One head at a time: the (R, T, T) probabilities of all heads at once would be the
        # largest array of the model for long rows.
        qh, kh = qk
        probs = class_attention(qh[:, :, None], kh[:, :, None], bias=bias, mask=mask)
        return jnp.where(real_q, probs, 0.0)[:, 0].sum(axis=1)  # (R, T)

    heads = (jnp.moveaxis(q, 2, 0), jnp.moveaxis(k, 2, 0))  # (H, R, T, D)
    return jax.lax.map(one_head, heads).mean(axis=0)


def packed_topk(
        score: jax.Array,
        segment_ids: jax.Array,
        *,
        keep_rate: float,
        num_slots: int,
) -> tuple[ReduceFn, jax.Array]:
    """Plan TopK pruning inside packed rows (see the module docstring for the rules).

    Args:
        score: (R, T) token importance (higher = keep); only compared within a segment.
        segment_ids: (R, T) int, 1..num_slots per sample, 0 = padding.
        keep_rate: fraction of each sample's tokens kept (rounded up).
        num_slots: S.

    Returns:
        select(x, mode=None): (R, T, ...) -> (R, K, ...) the kept tokens in row order;
        segment ids (R, K). K = `row_keep_count(T, keep_rate, S)`.
    """
    rows, t = segment_ids.shape
    keep = row_keep_count(t, keep_rate, num_slots)
    if keep == t:
        return (lambda x, mode=None: x), segment_ids
    score = jax.lax.stop_gradient(score).astype(jnp.float32)
    counts = _segment_counts(segment_ids, num_slots)
    quota = jnp.ceil(keep_rate * counts.astype(jnp.float32)).astype(jnp.int32)
    quota = jnp.minimum(quota, counts).at[:, 0].set(0)
    real = segment_ids > 0
    order = _rank_by_score(jnp.where(real, score, 0.0), segment_ids,
                           jnp.ones_like(real))
    kept = real & (order < jnp.take_along_axis(quota, segment_ids, axis=1))
    keep_idx = _fill_with_padding(kept, ~kept, keep)
    new_seg = jnp.take_along_axis(jnp.where(kept, segment_ids, 0), keep_idx, axis=1)

    def select(x: jax.Array, mode=None) -> jax.Array:
        del mode
        if x.shape[:2] != (rows, t):
            raise ValueError(f"pruning planned for (rows, tokens) = {(rows, t)}, got x of "
                             f"shape {x.shape}")
        return _take(x, keep_idx)

    return select, new_seg
