"""ElasticAST: one AST for any clip length and resolution through sequence packing.

The packed path of the AST (ElasticAST, arXiv 2407.08691; docs/REFERENCES.md §6): the
patches of many clips lie end to end in rows of a fixed token budget
(`fast_ast_jax.packing`), attention is masked to each token's own sample, and one pooled
vector per sample feeds the head. Same parameter names and shapes as `models.ast.AST`
wherever the two share a part, so a trained AST runs packed as it is (the packed path
simply does not use cls_token/dist_token):

    patch_embed/{kernel (ph,pw,1,W), bias}   applied as a Dense on (p_freq, p_time) patches
    pos_embed (1, prefix + f*t, W)         pos_embedding="ast": gathered at f * t_dim + t
    pos_embed_freq (f, W), pos_embed_time (t_max, W)   pos_embedding="factorised"
    block_{i}/...   norm   head_norm   head              as in AST
    attn_pool_query (W,), attn_pool/{q, kv, out}        pool="attn" only

Input: a dict with `patches` (R, L, ph*pw) float32, `segment_ids` (R, L) int (1..S, 0 =
padding), `positions` (R, L, 2) int (frequency, time) patch index and `slot_index` (R, S)
int (-1 = empty slot; only its shape S and its validity are used here). Output: logits
(R, S, num_classes) float32 and a (R, S) bool mask of the slots that hold a sample;
`unpack_logits` puts them back in the original sample order.

Attention uses AST's 1/sqrt(head_dim) scale (ElasticAST's released code omits it; that only
matters for loading their checkpoints, which this module does not attempt).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fast_ast_jax.models import packed_reduce, posemb
from fast_ast_jax.models.ast import SCHEDULE_FIELDS, Block, Encoder, reduction_schedule
from fast_ast_jax.models.attention import dot_product_attention
from fast_ast_jax.models.tome import merge_source, merge_wavg
from fast_ast_jax.patches import grid_shape, patch_shape

POS_EMBEDDINGS = ("factorised", "ast")
POOLS = ("attn", "mean")


class PatchEmbed(nn.Module):
    """AST's conv patch embedding applied to pre-cut patches: (..., ph*pw) -> (..., W),
    (ph, pw) = patch_shape(patch_size)."""

    width: int
    patch_size: int | tuple[int, int] = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, patches):
        ph, pw = patch_shape(self.patch_size)
        if patches.shape[-1] != ph * pw:
            raise ValueError(f"patches have {patches.shape[-1]} values, expected {ph * pw} "
                             f"for {ph}x{pw} patches (packing.patchify's layout)")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (ph, pw, 1, self.width))
        bias = self.param("bias", nn.initializers.zeros, (self.width,))
        # Row-major reshape: index p_freq * pw + p_time, exactly patchify's vector order.
        kernel = kernel.reshape(ph * pw, self.width).astype(self.dtype)
        return patches.astype(self.dtype) @ kernel + bias.astype(self.dtype)


class _PackedState:
    """Per-forward carry of the packed token reduction: segment ids, sizes, sources."""

    def __init__(self, segment_ids, size, source):
        self.segment_ids = segment_ids  # (R, T) int32
        self.size = size  # (R, T, 1) float32
        self.source = source  # (R, T, L) float32 0/1, or None
        self.reduced = False


def _reduce_packed(x, q, k, *, state: _PackedState, r: int, keep_rate: float,
                   num_slots: int, bias):
    """Packed TopK (first, scored by this block's attention) then ToMe on (R, T, W) tokens.

    Same order as `ast.AST`: pruning before merging.
    """
    if keep_rate < 1.0:
        score = packed_reduce.received_attention(q, k, state.segment_ids, bias=bias)
        select, state.segment_ids = packed_reduce.packed_topk(
            score, state.segment_ids, keep_rate=keep_rate, num_slots=num_slots)
        x, k, state.size = select(x), select(k), select(state.size)
        if state.source is not None:
            state.source = select(state.source)
        state.reduced = True
    if r > 0:
        merge, seg = packed_reduce.packed_bipartite_matching(
            k.mean(axis=2), state.segment_ids, r=r, num_slots=num_slots)
        if state.source is not None:
            state.source = merge_source(merge, x, state.source)
        x, state.size = merge_wavg(merge, x, state.size)
        state.segment_ids = seg
        state.reduced = True
    return x


class AttentionPool(nn.Module):
    """ElasticAST's masked attention pooling: one learned query per sample slot.

    Slot s of a row attends to the tokens of segment s + 1 only; under token merging the
    keys carry log(size) (proportional attention), so a merged token weighs as its parts.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query, x, *, segment_ids, num_slots: int, size=None):
        """query: (W,); x: (R, T, W); segment_ids (R, T); size (R, T, 1) or None.

        Returns (R, num_slots, W)."""
        rows, _, width = x.shape
        head_dim = width // self.num_heads
        q = nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name="q")(
            query.astype(self.dtype))
        kv = nn.DenseGeneral((2, self.num_heads, head_dim), dtype=self.dtype, name="kv")(x)
        q = jnp.broadcast_to(q, (rows, num_slots) + q.shape)
        slots = jnp.broadcast_to(jnp.arange(1, num_slots + 1), (rows, num_slots))
        mask = packed_reduce.segment_mask(slots, segment_ids)
        bias = None if size is None else jnp.log(size[..., 0])[:, None, None, :]
        out = dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], bias=bias, mask=mask)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(out)


def masked_mean_pool(x, *, segment_ids, num_slots: int, size=None):
    """Per-sample mean of packed tokens, weighted by ToMe sizes when given.

    x: (R, T, W); segment_ids (R, T); size (R, T, 1) or None -> (R, num_slots, W) float32
    (0 for empty slots). With sizes this is the mean over the sample's original patches.
    """
    onehot = jax.nn.one_hot(segment_ids - 1, num_slots, dtype=jnp.float32)  # pad -> 0s
    if size is not None:
        onehot = onehot * size.astype(jnp.float32)
    total = jnp.einsum("rts,rtw->rsw", onehot, x.astype(jnp.float32))
    return total / jnp.maximum(onehot.sum(axis=1), 1e-6)[..., None]


class ElasticAST(Encoder):
    """AST on packed rows (see the module docstring for inputs, outputs and parameters).

    Attributes:
        num_classes, width, depth, num_heads, mlp_dim, patch_size, fstride, tstride,
        num_mel_bins, frames, dist_token, ln_eps, head_ln_eps, dropout, dtype: as in `AST`
            (`ast.Encoder`, the one definition of both models' shared fields);
            `frames` sizes the time position table (64 time patches for 1024 frames at
            stride 16); `dist_token` only sets the prefix length of an AST `pos_embed`.
        pos_embedding: "factorised" (ElasticAST: pos_embed_freq[f] + pos_embed_time[t]) or
            "ast" (AST's 2-D `pos_embed` gathered at f * t_dim + t). Time positions past the
            table are clamped inside jit (a traced position cannot raise); call
            `check_positions` on the host to turn them into an error instead.
        pool: "attn" (learned query, masked attention) or "mean" (masked, size-weighted).
        tome_r: ToMe schedule as `AST.tome_r` (`tome.parse_schedule`): merges per packed
            row and block; each sample gets its share (`packed_reduce`).
        tome_prop_attn: proportional attention (log size key bias) after merging.
        prune_keep_rate, prune_layers: TopK per sample after attention of these blocks.
        reduce_last_block: False (always, for new models): the last block never reduces,
            as in `AST` (`ast.reduction_schedule`); True keeps the last entry of the
            schedules, the meaning of checkpoints saved before that rule (their metadata
            has no such field and loads with True, `checkpoints.store.model_fields_from_meta`;
            a run resumed in its workdir keeps it, `train.loop.resume`).
            Here a last-block reduction does change the output (the pooling reads every
            token), but it saves only the last MLP and pooling on the removed tokens, net
            of its matching ~0.5 % of the MACs at configs/fsdd_elastic.py's r=16 (6
            blocks, rows of 256): one rule for both models costs nothing measurable.
        trace_source: also return the (R, T_final, L) 0/1 map of original tokens per token.
    """

    pos_embedding: str = "factorised"
    pool: str = "attn"
    reduce_last_block: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        """(f_dim, t_max): the position tables' size."""
        return grid_shape(frames=self.frames, num_mel_bins=self.num_mel_bins,
                          patch_size=self.patch_size, fstride=self.fstride,
                          tstride=self.tstride)

    def schedules(self) -> tuple[list[int], list[float]]:
        """Per-block ToMe r (before the row clamp) and TopK keep rate, validated
        (`ast.reduction_schedule`, the parser AST uses)."""
        return reduction_schedule(name="ElasticAST", reduce_last_block=self.reduce_last_block,
                                  **{k: getattr(self, k) for k in SCHEDULE_FIELDS})

    def token_counts(self, length: int, num_slots: int) -> list[int]:
        """Static tokens per row leaving each block, for rows of `length` tokens."""
        counts, tokens = [], length
        for r, keep in zip(*self.schedules()):
            tokens = packed_reduce.row_keep_count(tokens, keep, num_slots)
            tokens -= packed_reduce.row_merge_count(tokens, r, num_slots)
            counts.append(tokens)
        return counts

    def position_embedding(self, positions):
        """positions (R, L, 2) int (frequency, time) -> (R, L, W)."""
        f_dim, t_dim = self.grid
        init = nn.initializers.truncated_normal(0.02)
        freq, time = positions[..., 0], positions[..., 1]
        if self.pos_embedding == "factorised":
            table_f = self.param("pos_embed_freq", init, (f_dim, self.width))
            table_t = self.param("pos_embed_time", init, (t_dim, self.width))
            return (jnp.take(table_f, freq, axis=0, mode="clip")
                    + jnp.take(table_t, time, axis=0, mode="clip"))
        if self.pos_embedding == "ast":
            table = self.param("pos_embed", init,
                               (1, self.num_prefix + f_dim * t_dim, self.width))
            grid = table[0, self.num_prefix:]
            index = (jnp.clip(freq, 0, f_dim - 1) * t_dim + jnp.clip(time, 0, t_dim - 1))
            return jnp.take(grid, index, axis=0)
        raise ValueError(f"unknown pos_embedding {self.pos_embedding!r}; use one of "
                         f"{POS_EMBEDDINGS}")

    @nn.compact
    def __call__(self, batch: Mapping[str, Any], *, train: bool = False):
        """batch: packed dict (module docstring) -> (logits (R, S, C), valid (R, S)).

        With trace_source, returns (logits, valid, source (R, T_final, L))."""
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; use one of {POOLS}")
        patches, seg = batch["patches"], jnp.asarray(batch["segment_ids"], jnp.int32)
        positions = jnp.asarray(batch["positions"], jnp.int32)
        slot_index = batch["slot_index"]
        if patches.ndim != 3 or seg.shape != patches.shape[:2] \
                or positions.shape != patches.shape[:2] + (2,):
            raise ValueError(f"packed batch shapes disagree: patches {patches.shape} (R, L, "
                             f"P), segment_ids {seg.shape} (R, L), positions "
                             f"{positions.shape} (R, L, 2)")
        rows, length = seg.shape
        num_slots = slot_index.shape[1]
        x = PatchEmbed(self.width, self.patch_size, dtype=self.dtype, name="patch_embed")(
            patches)
        x = x + self.position_embedding(positions).astype(self.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        source = None
        if self.trace_source:
            source = jnp.broadcast_to(jnp.eye(length, dtype=jnp.float32),
                                      (rows, length, length))
        state = _PackedState(seg, jnp.ones((rows, length, 1), jnp.float32), source)
        for i, (r, keep) in enumerate(zip(*self.schedules())):
            mask = packed_reduce.segment_mask(state.segment_ids, state.segment_ids)
            bias = None
            if self.tome_prop_attn and state.reduced:
                bias = jnp.log(state.size[..., 0])[:, None, None, :]
            reduce = None
            if r > 0 or keep < 1.0:
                def reduce(x, q, k, r=r, keep=keep, bias=bias):
                    return _reduce_packed(x, q, k, state=state, r=r, keep_rate=keep,
                                          num_slots=num_slots, bias=bias)
            x = Block(self.num_heads, self.mlp_dim, ln_eps=self.ln_eps, dropout=self.dropout,
                      dtype=self.dtype, name=f"block_{i}")(
                x, bias=bias, mask=mask, deterministic=not train, reduce=reduce)
        x = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm")(x)
        size = state.size if state.reduced else None
        if self.pool == "attn":
            query = self.param("attn_pool_query", nn.initializers.truncated_normal(0.02),
                               (self.width,))
            pooled = AttentionPool(self.num_heads, dtype=self.dtype, name="attn_pool")(
                query, x, segment_ids=state.segment_ids, num_slots=num_slots,
                size=size if self.tome_prop_attn else None)
        else:
            pooled = masked_mean_pool(x, segment_ids=state.segment_ids,
                                      num_slots=num_slots, size=size)
        pooled = nn.LayerNorm(epsilon=self.head_ln_eps, use_fast_variance=False,
                              dtype=self.dtype, name="head_norm")(pooled.astype(self.dtype))
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
        valid = jnp.asarray(slot_index) >= 0
        logits = jnp.where(valid[..., None], logits.astype(jnp.float32), 0.0)
        if self.trace_source:
            return logits, valid, state.source
        return logits, valid


def check_positions(model: ElasticAST, positions: np.ndarray) -> None:
    """Host-side check that every (frequency, time) position fits the model's tables.

    Raises:
        ValueError: naming the largest position and the table size, with what to do.
    """
    f_dim, t_dim = model.grid
    positions = np.asarray(positions)
    for axis, (name, size) in enumerate((("frequency", f_dim), ("time", t_dim))):
        top = int(positions[..., axis].max(initial=0))
        if top >= size or int(positions[..., axis].min(initial=0)) < 0:
            raise ValueError(
                f"{name} patch position {top} is outside the model's table of {size} "
                f"(frames={model.frames}, num_mel_bins={model.num_mel_bins}); crop the clip, "
                f"use a larger hop, or build the model with more frames (the table is then "
                f"interpolated, see factorise_pos_embed/resize)")


def unpack_logits(logits: jax.Array, slot_index: jax.Array, num_samples: int) -> jax.Array:
    """(R, S, C) per-slot outputs -> (num_samples, C) in the original sample order.

    slot_index: (R, S) int, index of the sample in each slot (-1 = empty); a sample that
    is in no slot gets zeros.
    """
    flat = logits.reshape((-1,) + logits.shape[2:])
    order = jnp.asarray(slot_index).reshape(-1)
    order = jnp.where(order < 0, num_samples, order)
    out = jnp.zeros((num_samples,) + logits.shape[2:], logits.dtype)
    return out.at[order].set(flat, mode="drop")


def factorise_pos_embed(pos_embed: np.ndarray, *, grid: tuple[int, int], num_prefix: int,
                        new_grid: tuple[int, int] | None = None):
    """AST's (1, prefix + f*t, W) table -> ElasticAST's (freq (f, W), time (t, W)) tables.

    As ElasticAST initialises from a 2-D grid (docs/REFERENCES.md §6): resize the grid to
    `new_grid` (AST rule: centre cut or bilinear), then average over the other axis.
    """
    f_dim, t_dim = grid
    table = np.asarray(pos_embed)
    if table.shape[1] != num_prefix + f_dim * t_dim:
        raise ValueError(f"pos_embed has {table.shape[1]} positions, expected {num_prefix} "
                         f"+ {f_dim}x{t_dim}")
    g = jnp.asarray(table[0, num_prefix:].reshape(f_dim, t_dim, -1))
    if new_grid is not None:
        g = posemb.resize_grid(g, new_shape=new_grid, method="ast")
    return np.asarray(g.mean(axis=1)), np.asarray(g.mean(axis=0))


def params_from_ast(model: ElasticAST, ast_params: Mapping[str, Any], *,
                    ast_grid: tuple[int, int], num_prefix: int,
                    init: Mapping[str, Any]) -> dict[str, Any]:
    """An ElasticAST parameter tree from a trained AST's (fine-tuning initialisation).

    Copies patch_embed, blocks, norm, head_norm and head (the head only when its shape
    matches, e.g. the same class count); adapts the position table to the model's grid
    (AST rule: centre cut or bilinear), factorised like ElasticAST when
    pos_embedding="factorised"; attention pooling keeps its fresh initialisation.

    Args:
        ast_params: AST tree (pos_embed (1, num_prefix + f*t, W) on `ast_grid`).
        init: a freshly initialised tree of `model` (supplies what AST lacks).
    """
    out = {k: v for k, v in init.items()}
    for name, value in ast_params.items():
        if name in ("pos_embed", "cls_token", "dist_token") or name not in out:
            continue
        if jax.tree.structure(value) == jax.tree.structure(out[name]) and all(
                np.shape(a) == np.shape(b) for a, b in
                zip(jax.tree.leaves(value), jax.tree.leaves(out[name]))):
            out[name] = value
    grid = model.grid
    if model.pos_embedding == "factorised":
        out["pos_embed_freq"], out["pos_embed_time"] = factorise_pos_embed(
            ast_params["pos_embed"], grid=ast_grid, num_prefix=num_prefix, new_grid=grid)
    else:
        table = posemb.resize_tokens(np.asarray(ast_params["pos_embed"]), old_grid=ast_grid,
                                     new_grid=grid, num_prefix=num_prefix, method="ast")
        # The packed path never reads the CLS/DIST rows: zeros keep the AST layout.
        prefix = np.zeros((1, model.num_prefix, table.shape[-1]), table.dtype)
        out["pos_embed"] = np.concatenate([prefix, np.asarray(table)[:, num_prefix:]], 1)
    return out
