"""Audio Spectrogram Transformer (AST) in Flax linen.

Follows the original AST / HF `ASTForAudioClassification` (arXiv 2104.01778;
docs/REFERENCES.md §3): 16x16 conv patches (or any (frequency, time) patch, `patch_shape`,
e.g. SSAST's 128x2 frame patches) with (frequency, time) strides over a (frames, mel)
fbank, frequency-major tokens, CLS (+ DIST) tokens, a learned positional embedding, pre-LN
blocks with exact GELU, final LayerNorm, and a head (LayerNorm + Dense) on the mean of CLS
and DIST.

Parameter tree (what `fast_ast_jax.convert` fills):
    patch_embed/{kernel (ph,pw,1,W), bias}   ((ph, pw) = patch_shape(patch_size): 16x16)
    cls_token (1,1,W)   dist_token (1,1,W)
    pos_embed (1, prefix + f_dim*t_dim, W)
    block_{i}/{norm1, attn/qkv (W,3,H,D), attn/out (H,D,W), norm2, mlp/fc1, mlp/fc2}
    norm   head_norm   head (W, num_classes)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fast_ast_jax.models import posemb, prune, tome
from fast_ast_jax.models.attention import SelfAttention
from fast_ast_jax.patches import grid_shape, patch_field, patch_shape

# DeiT widths (arXiv 2012.12877; docs/REFERENCES.md §3); all have 12 blocks and head_dim 64.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}


class Mlp(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(width, dtype=self.dtype, name="fc2")(gelu_exact(x))


def gelu_exact(x):
    """Exact (erf) GELU, x * Phi(x), written with erf: `jax.nn.gelu(approximate=False)` uses
    erfc(-x / sqrt 2), which XLA CPU evaluates ~4x slower than erf (3.4 vs 13 ms on the
    (2, 1214, 3072) MLP activations of AST-base), for outputs within 5e-7 of it."""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.asarray(0.5 ** 0.5, x.dtype)))


class Block(nn.Module):
    """Pre-LN transformer block: x += attn(ln(x)); x = reduce(x); x += mlp(ln(x))."""

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-6
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, bias=None, mask=None, deterministic: bool = True,
                 reduce: Callable | None = None, num_queries: int | None = None):
        """x: (B, T, W) -> (B, T', W).

        reduce: optional token reduction `(x, q, k) -> x` (B, T, W) -> (B, T', W) applied
            on the residual stream between attention and MLP (ToMe / TopK), given the
            attention's queries and keys (B, T, H, D).
        num_queries: only the first Q tokens leave the block, T' = Q (all tokens still serve
            as keys and values); for a last block whose other outputs are never read.
        """
        y = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm1")(x)
        y, q, k = SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(
            y, bias=bias, mask=mask, num_queries=num_queries)
        x = x[:, :num_queries] + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        if reduce is not None:
            x = reduce(x, q, k)
        y = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm2")(x)
        y = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class LayerPlan(NamedTuple):
    """Static token bookkeeping of one block (all Python ints).

    tokens_in: tokens entering the block (attention runs on these).
    keep: patch tokens kept by TopK pruning in this block, or None.
    r: ToMe merges in this block (after the clamp; 0 = none).
    tokens_out: tokens leaving the block (the MLP runs on these).
    """

    tokens_in: int
    keep: int | None
    r: int
    tokens_out: int


class _ReductionState:
    """Per-forward mutable carry of the token reduction (sizes, sources, aux outputs)."""

    def __init__(self, size, source):
        self.size = size  # (B, T, 1) float32, or None while all sizes are 1
        self.source = source  # (B, T, T0) float32 0/1, or None
        self.scores = None
        self.kept = None


class Backbone(nn.Module):
    """The transformer and input fields of every AST-shaped model, defined once with their
    defaults: the AST and ElasticAST (through `Encoder`) and the masked-pretraining
    models.mae.MAE, whose encoder weights are an AST's. Their meaning: see `AST`."""

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int | tuple[int, int] = 16
    fstride: int = 10
    tstride: int = 10
    num_mel_bins: int = 128
    frames: int = 1024
    dist_token: bool = True
    ln_eps: float = 1e-6
    dtype: Any = jnp.float32

    @property
    def num_prefix(self) -> int:
        return 2 if self.dist_token else 1

    def grid(self, frames: int | None = None) -> tuple[int, int]:
        """(f_dim, t_dim) patches of an input of `frames` frames (default: the model's)."""
        return grid_shape(frames=self.frames if frames is None else frames,
                          num_mel_bins=self.num_mel_bins, patch_size=self.patch_size,
                          fstride=self.fstride, tstride=self.tstride)

    def backbone_fields(self) -> dict[str, Any]:
        """This model's `Backbone` fields (what another AST-shaped model shares with it)."""
        return {k: getattr(self, k) for k in field_names(Backbone)}


class Encoder(Backbone):
    """The fields that AST and the packed ElasticAST share beyond the backbone, defined
    once with their defaults (both subclass it; `ast_twin` turns either into the padded AST
    with the same weights' shapes). Their meaning: see `AST`."""

    num_classes: int = 527
    head_ln_eps: float = 1e-5
    dropout: float = 0.0
    tome_r: int | str = 0
    tome_prop_attn: bool = True
    prune_keep_rate: float = 1.0
    prune_layers: tuple = (3, 6, 9)
    trace_source: bool = False


class AST(Encoder):
    """AST classifier. Input: (B, frames, mel) normalised fbank (HF `input_values`).

    Attributes:
        num_classes: output logits.
        width, depth, num_heads, mlp_dim: transformer size (see `SIZES`).
        patch_size: the conv patch: an int p (p x p, AST's 16; what pretrained weights
            have) or a (frequency bins, time frames) pair such as SSAST's (128, 2) (a patch
            spans all 128 mel bins and 2 frames: one token per 2-frame column), kept in
            `patch_field`'s form (an int when square).
        fstride, tstride: the patches' strides (<= the patch's side for full coverage,
            e.g. fstride=128, tstride=2 with (128, 2) patches).
        num_mel_bins, frames: the input the positional embedding is sized for. Inputs with
            another frame count are accepted: the time axis of the position grid is then cut
            (first columns) or bilinearly interpolated at trace time.
        dist_token: CLS + DIST (AST/DeiT) or CLS only.
        ln_eps: LayerNorm epsilon in blocks and the final norm (original AST 1e-6, HF 1e-12).
        head_ln_eps: LayerNorm epsilon of the head (original AST 1e-5, HF 1e-12).
        dropout: dropout after attention and MLP (training only).
        dtype: compute dtype (float32 or bfloat16); parameters stay float32.
        tome_r: ToMe schedule (`tome.parse_schedule`): int r (constant), "ramp:R,INFL"
            (ToMe's linear ramp) or "blocks:R0,R1,..." (per block). 0 = off. Clamped per
            block to half the mergeable tokens. The last block never reduces (below).
        tome_prop_attn: proportional attention: log(token size) added to the attention
            logits of every key once tokens have been merged (only when ToMe is on; the
            sizes then include EViT-fused tokens).
        prune_keep_rate: TopK pruning keeps ceil(rate * patch tokens) in each pruning block
            (1 = off).
        prune_layers: 0-based blocks that prune (the last block is ignored, below).
        prune_fuse: EViT fusion: the dropped tokens become one extra (score-weighted) token.
        prune_score: "cls" (CLS attention, the reference) or "cls_dist" (mean of CLS and
            DIST attention rows).
        trace_source: record which input tokens every token holds (B, T, T0); costly.

    Token reduction sits between the attention residual and the MLP of a block: pruning
    first (scores from this block's attention), then merging. Token counts per block are
    static (`token_plan`). The last block never reduces, whatever the schedule or
    prune_layers say (`reduction_schedule`): the head reads only CLS / DIST, which a
    reduction after the last attention cannot change, and the last block then computes
    only those tokens (`prefix_only_last_block`), which is cheaper than any reduction.
    Auxiliary outputs are sown into the "intermediates" collection (`apply(...,
    mutable=["intermediates"])`): `prune_scores_{i}` (B, N_i) class-attention scores and
    `prune_kept_{i}` (B, k_i) kept patch indices at each pruning block i, `sizes` (B,
    T_final, 1) final token sizes (when any reduction runs) and, with `trace_source`,
    `source` (B, T_final, T0) including the class-token columns.
    """

    prune_fuse: bool = False
    prune_score: str = "cls"

    def r_schedule(self) -> list[int]:
        """Per-block ToMe r from `tome_r` (before the per-block clamp; 0 in the last block),
        validated."""
        return reduction_schedule(name="AST", **{k: getattr(self, k) for k in SCHEDULE_FIELDS})[0]

    def token_plan(self, frames: int | None = None) -> list[LayerPlan]:
        """Static per-block token counts for an input of `frames` frames (default: the
        model's), validating the reduction fields (module-level `token_plan`). Used by MAC
        counting and the forward."""
        return token_plan(grid=self.grid(frames), **{k: getattr(self, k) for k in PLAN_FIELDS})

    def prefix_only_last_block(self) -> bool:
        """Whether the last block computes only the CLS / DIST outputs.

        The head reads only those tokens, and every step after the last block's attention
        (out projection, residual, LayerNorm, MLP) is per token, so the other tokens' last
        outputs are never used: skipping them saves ~1/depth of the forward (7% of AST-base)
        with the same logits. Always, except when `trace_source` records every token (the
        last block never reduces tokens, `reduction_schedule`).
        """
        return not self.trace_source

    def token_counts(self, frames: int | None = None) -> list[int]:
        """Tokens leaving each block (static)."""
        return [lp.tokens_out for lp in self.token_plan(frames)]

    def embed(self, x):
        """(B, frames, mel) fbank -> (B, prefix + f_dim*t_dim, W) tokens + positions."""
        return jnp.concatenate(embed_tokens(self, x), axis=1)

    def pool(self, x):
        """(B, T, W) encoded tokens -> (B, W): mean of CLS and DIST (or CLS)."""
        return x[:, : self.num_prefix].mean(axis=1)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x: (B, frames, mel) -> logits (B, num_classes) in float32."""
        frames = x.shape[1] if x.ndim == 3 else None
        plan = self.token_plan(frames)
        prefix_only = self.prefix_only_last_block()
        x = self.embed(x)
        b, t0 = x.shape[:2]
        reducing = any(lp.keep is not None or lp.r > 0 for lp in plan)
        source = None
        if self.trace_source:
            source = jnp.broadcast_to(jnp.eye(t0, dtype=jnp.float32), (b, t0, t0))
        state = _ReductionState(None, source)
        # Proportional attention belongs to ToMe: pure pruning (with or without EViT
        # fusion) keeps plain attention, as in the pruning reference.
        prop_attn = self.tome_prop_attn and any(lp.r > 0 for lp in plan)
        for i, lp in enumerate(plan):
            bias = None
            if prop_attn and state.size is not None:
                bias = jnp.log(state.size)[:, None, None, :, 0]  # (B, 1, 1, T) key bias
            reduce = None
            if lp.keep is not None or lp.r > 0:
                def reduce(x, q, k, lp=lp, bias=bias):
                    return _reduce_tokens(self, x, q, k, plan=lp, bias=bias, state=state)
            last = prefix_only and i == len(plan) - 1
            x = Block(self.num_heads, self.mlp_dim, ln_eps=self.ln_eps, dropout=self.dropout,
                      dtype=self.dtype, name=f"block_{i}")(
                x, bias=bias, deterministic=not train, reduce=reduce,
                num_queries=self.num_prefix if last else None)
            if lp.keep is not None:
                self.sow("intermediates", f"prune_scores_{i}", state.scores)
                self.sow("intermediates", f"prune_kept_{i}", state.kept)
        if reducing:
            size = state.size
            if size is None:  # x may hold only the prefix tokens: size all final tokens
                size = jnp.ones((b, plan[-1].tokens_out, 1), jnp.float32)
            self.sow("intermediates", "sizes", size)
        if self.trace_source:
            self.sow("intermediates", "source", state.source)
        x = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm")(x)
        x = self.pool(x)
        x = nn.LayerNorm(epsilon=self.head_ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="head_norm")(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def embed_tokens(model: nn.Module, x):
    """AST's embedding, called inside `model`'s compact method (AST, models.mae.Encoder):
    (B, frames, mel) fbank -> class tokens (B, prefix, W) and patch tokens
    (B, f_dim*t_dim, W), each with its position embedding added.

    Creates `model`'s patch_embed, cls_token, (dist_token,) and pos_embed parameters;
    `model` has AST's width, patch_size, strides, num_mel_bins, dist_token, dtype, `grid`
    and `num_prefix`. Patch tokens come apart from the class tokens so that masked
    pretraining can keep a subset of them (models.mae).
    """
    if x.ndim != 3 or x.shape[-1] != model.num_mel_bins:
        raise ValueError(f"{type(model).__name__} expects input (batch, frames, "
                         f"{model.num_mel_bins}), got {x.shape}")
    b, frames, _ = x.shape
    # (B, T, F) -> (B, F, T, 1): height = frequency, width = time, as in AST.
    x = jnp.transpose(x, (0, 2, 1))[..., None].astype(model.dtype)
    x = nn.Conv(model.width, patch_shape(model.patch_size),
                strides=(model.fstride, model.tstride), padding="VALID", dtype=model.dtype,
                name="patch_embed")(x)
    x = x.reshape(b, -1, model.width)  # frequency-major: token = f * t_dim + t
    init = nn.initializers.truncated_normal(0.02)
    prefix = [model.param("cls_token", init, (1, 1, model.width))]
    if model.dist_token:
        prefix.append(model.param("dist_token", init, (1, 1, model.width)))
    f_dim, t_dim = model.grid()
    pos = model.param("pos_embed", init, (1, model.num_prefix + f_dim * t_dim, model.width))
    pos = posemb.resize_tokens(pos, old_grid=(f_dim, t_dim), new_grid=model.grid(frames),
                               num_prefix=model.num_prefix, method="prefix").astype(model.dtype)
    prefix = [jnp.broadcast_to(t, (b, 1, model.width)).astype(model.dtype) for t in prefix]
    return (jnp.concatenate(prefix, axis=1) + pos[:, :model.num_prefix],
            x + pos[:, model.num_prefix:])


def _reduce_tokens(model: AST, x, q, k, *, plan: LayerPlan, bias, state: _ReductionState):
    """One block's token reduction on the residual stream: TopK pruning, then ToMe.

    x: (B, T, W); q, k: (B, T, H, D) -> (B, plan.tokens_out, W). Updates `state`.
    """
    npre = model.num_prefix
    metric = k.mean(axis=2)  # (B, T, D) head-averaged keys: ToMe's matching feature
    if plan.keep is not None:
        scores = prune.class_token_scores(q, k, num_prefix=npre, score=model.prune_score,
                                          bias=bias)
        x, kept = prune.topk_prune(x, scores, num_keep=plan.keep, num_prefix=npre,
                                   fuse=model.prune_fuse)
        state.scores, state.kept = scores, kept
        fused = dict(metric=None, size=None, source=None)
        if model.prune_fuse:
            dropped = prune.dropped_mask(kept, scores.shape[1])  # (B, N)
            weights = jnp.where(dropped, scores, 0.0)
            fused["metric"] = prune.fuse_dropped(metric[:, npre:], weights)
            size = state.size
            if size is None:
                size = jnp.ones(metric.shape[:2] + (1,), jnp.float32)
            state.size = size
            fused["size"] = jnp.sum(size[:, npre:] * dropped[..., None], axis=1)
            if state.source is not None:
                fused["source"] = jnp.max(state.source[:, npre:] * dropped[..., None], axis=1)
        metric = prune.gather_tokens(metric, kept, num_prefix=npre, fused=fused["metric"])
        if state.size is not None:
            state.size = prune.gather_tokens(state.size, kept, num_prefix=npre,
                                             fused=fused["size"])
        if state.source is not None:
            state.source = prune.gather_tokens(state.source, kept, num_prefix=npre,
                                               fused=fused["source"])
    if plan.r > 0:
        merge = tome.bipartite_soft_matching(metric, r=plan.r, class_token=True,
                                             distill_token=model.dist_token)
        if state.source is not None:
            state.source = tome.merge_source(merge, x, state.source)
        x, state.size = tome.merge_wavg(merge, x, state.size)
    if x.shape[1] != plan.tokens_out:
        raise AssertionError(f"token plan says {plan.tokens_out} tokens, got {x.shape[1]}")
    return x


# The fields of an AST / ElasticAST that its reduction schedules and token plan read.
SCHEDULE_FIELDS = ("depth", "tome_r", "prune_keep_rate", "prune_layers")
PLAN_FIELDS = SCHEDULE_FIELDS + ("dist_token", "prune_fuse", "prune_score")


def reduction_schedule(*, depth: int, tome_r: int | str, prune_keep_rate: float,
                       prune_layers, name: str, reduce_last_block: bool = False
                       ) -> tuple[list[int], list[float]]:
    """Per-block ToMe r (before the per-block clamp) and TopK keep rate (1.0 = no pruning)
    of an AST or ElasticAST with these fields (`SCHEDULE_FIELDS`), validated; errors name
    `name`.<field>. The one parser of both models' schedules.

    The last block never reduces: its entry of any schedule (int r, "ramp:", "blocks:",
    a last block in prune_layers) is read as 0 / no pruning. In the AST a reduction there
    runs after the last attention, so it cannot change CLS / DIST, the head's only input,
    and costs the last block its CLS-only shortcut (more MACs than no reduction). It is
    ignored rather than refused so that every schedule, the (3, 6, 9) default on a
    10-block model and checkpoints of older versions keep the logits they had.
    `reduce_last_block` (ElasticAST checkpoints of older versions only, whose pooling read
    the last block's reduced tokens) keeps the last entry.
    """
    try:
        rs = tome.parse_schedule(tome_r, depth=depth)
        prune.check_keep_rate(prune_keep_rate)
    except ValueError as e:
        field = "tome_r" if "ToMe" in str(e) else "prune_keep_rate"
        raise ValueError(f"{name}.{field}: {e}") from None
    keeps = [1.0] * depth
    if prune_keep_rate < 1.0:  # default (3, 6, 9) must not reject shallow models
        bad = [i for i in prune_layers if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(f"{name}.prune_layers {tuple(prune_layers)} has block "
                             f"indices {bad} outside [0, depth={depth})")
        layers = {int(i) for i in prune_layers}
        keeps = [prune_keep_rate if i in layers else 1.0 for i in range(depth)]
    if not reduce_last_block:
        rs[-1], keeps[-1] = 0, 1.0
    return rs, keeps


def token_plan(*, grid: tuple[int, int], depth: int, tome_r: int | str,
               prune_keep_rate: float, prune_layers, dist_token: bool, prune_fuse: bool,
               prune_score: str) -> list[LayerPlan]:
    """Static per-block token counts of an AST with these fields (`PLAN_FIELDS`, meaning as
    in `AST`) on a (f_dim, t_dim) patch `grid`, validating the reduction fields (errors
    name AST.<field>). The one token plan: `AST.token_plan` and the training config's
    check (train.validate, which builds no model) call it."""
    rs, keeps = reduction_schedule(depth=depth, tome_r=tome_r,
                                   prune_keep_rate=prune_keep_rate,
                                   prune_layers=prune_layers, name="AST")
    if prune_score not in prune.SCORES:
        raise ValueError(f"AST.prune_score {prune_score!r} is not one of {prune.SCORES}")
    if prune_score == "cls_dist" and not dist_token:
        raise ValueError("AST.prune_score='cls_dist' needs dist_token=True")
    num_prefix = 2 if dist_token else 1
    tokens = num_prefix + grid[0] * grid[1]
    plan = []
    for r, rate in zip(rs, keeps):
        tokens_in, keep = tokens, None
        if rate < 1.0:
            keep = prune.num_kept(tokens - num_prefix, rate)
            tokens = num_prefix + keep + int(prune_fuse)
        r = tome.clamp_r(tokens, r, num_prefix)
        tokens -= r
        plan.append(LayerPlan(tokens_in, keep, r, tokens))
    return plan


def model_fields(model: nn.Module) -> dict[str, Any]:
    """The constructor fields of a model as a plain dict (for checkpoints and configs)."""
    out = {}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        v = getattr(model, f.name)
        out[f.name] = jnp.dtype(v).name if f.name == "dtype" else v
    return out


def field_names(cls: type[nn.Module]) -> set[str]:
    """The constructor fields of a model class."""
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def ast_fields(size: str = "base", *, cls: type[nn.Module] | None = None, **overrides
               ) -> dict[str, Any]:
    """Every constructor field of `cls` (default AST; or another model with AST's size
    fields) of a named size ("tiny", "small", "base") with field overrides, validated:
    what `create_ast` builds, as a dict."""
    cls = cls or AST
    if size not in SIZES:
        raise ValueError(f"unknown {cls.__name__} size {size!r}; choose one of "
                         f"{sorted(SIZES)}")
    known = field_names(cls)
    unknown = sorted((set(SIZES[size]) | set(overrides)) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: "
                         f"{sorted(known)}")
    fields = {f.name: f.default for f in dataclasses.fields(cls) if f.name in known
              and f.default is not dataclasses.MISSING}
    fields.update(SIZES[size], **overrides)
    if "patch_size" in fields:
        fields["patch_size"] = patch_field(fields["patch_size"])
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    return fields


def create_ast(size: str = "base", *, cls: type[nn.Module] | None = None, **overrides
               ) -> nn.Module:
    """AST (or another model with AST's size fields: an `Encoder` such as ElasticAST, or
    mae.MAE) of a named size ("tiny", "small", "base") with field overrides."""
    return (cls or AST)(**ast_fields(size, cls=cls, **overrides))


def ast_twin(model: Encoder) -> AST:
    """The padded AST with `model`'s shared fields (`Encoder`), whose weights an
    ElasticAST converts from (`elastic.params_from_ast`); an AST's twin is itself."""
    if isinstance(model, AST):
        return model
    return AST(**{k: getattr(model, k) for k in field_names(Encoder)} | {"trace_source": False})
