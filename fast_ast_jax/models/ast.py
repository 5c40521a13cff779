"""Audio Spectrogram Transformer (AST) in Flax linen.

Follows the original AST / HF `ASTForAudioClassification` (reference.md §3.1, §4):
16x16 conv patches with (frequency, time) strides over a (frames, mel) fbank, frequency-
major tokens, CLS (+ DIST) tokens, a learned positional embedding, pre-LN blocks with
exact GELU, final LayerNorm, and a head (LayerNorm + Dense) on the mean of CLS and DIST.

Parameter tree (what `fast_ast_jax.convert` fills):
    patch_embed/{kernel (16,16,1,W), bias}   cls_token (1,1,W)   dist_token (1,1,W)
    pos_embed (1, prefix + f_dim*t_dim, W)
    block_{i}/{norm1, attn/qkv (W,3,H,D), attn/out (H,D,W), norm2, mlp/fc1, mlp/fc2}
    norm   head_norm   head (W, num_classes)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fast_ast_jax.models import posemb
from fast_ast_jax.models.attention import SelfAttention

# DeiT widths (reference.md §3.1); all have 12 blocks and head_dim 64.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}


def grid_shape(*, frames: int, num_mel_bins: int, patch_size: int, fstride: int,
               tstride: int) -> tuple[int, int]:
    """(f_dim, t_dim): number of patches along frequency and time (no padding)."""
    if frames < patch_size or num_mel_bins < patch_size:
        raise ValueError(f"input of {frames} frames x {num_mel_bins} mel bins is smaller "
                         f"than one {patch_size}x{patch_size} patch")
    return ((num_mel_bins - patch_size) // fstride + 1,
            (frames - patch_size) // tstride + 1)


class Mlp(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(width, dtype=self.dtype, name="fc2")(x)


class Block(nn.Module):
    """Pre-LN transformer block: x += attn(ln(x)); x += mlp(ln(x))."""

    num_heads: int
    mlp_dim: int
    ln_eps: float = 1e-6
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, bias=None, mask=None, deterministic: bool = True):
        """x: (B, T, W) -> (B, T, W)."""
        y = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm1")(x)
        y, _, _ = SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(
            y, bias=bias, mask=mask)
        x = x + nn.Dropout(self.dropout)(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm2")(x)
        y = Mlp(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
        return x + nn.Dropout(self.dropout)(y, deterministic=deterministic)


class AST(nn.Module):
    """AST classifier. Input: (B, frames, mel) normalised fbank (HF `input_values`).

    Attributes:
        num_classes: output logits.
        width, depth, num_heads, mlp_dim: transformer size (see `SIZES`).
        patch_size, fstride, tstride: conv patches and their strides.
        num_mel_bins, frames: the input the positional embedding is sized for. Inputs with
            another frame count are accepted: the time axis of the position grid is then cut
            (first columns) or bilinearly interpolated at trace time.
        dist_token: CLS + DIST (AST/DeiT) or CLS only.
        ln_eps: LayerNorm epsilon in blocks and the final norm (original AST 1e-6, HF 1e-12).
        head_ln_eps: LayerNorm epsilon of the head (original AST 1e-5, HF 1e-12).
        dropout: dropout after attention and MLP (training only).
        dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    """

    num_classes: int = 527
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    num_mel_bins: int = 128
    frames: int = 1024
    dist_token: bool = True
    ln_eps: float = 1e-6
    head_ln_eps: float = 1e-5
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @property
    def num_prefix(self) -> int:
        return 2 if self.dist_token else 1

    def grid(self, frames: int | None = None) -> tuple[int, int]:
        return grid_shape(frames=self.frames if frames is None else frames,
                          num_mel_bins=self.num_mel_bins, patch_size=self.patch_size,
                          fstride=self.fstride, tstride=self.tstride)

    def embed(self, x):
        """(B, frames, mel) fbank -> (B, prefix + f_dim*t_dim, W) tokens + positions."""
        if x.ndim != 3 or x.shape[-1] != self.num_mel_bins:
            raise ValueError(f"AST expects input (batch, frames, {self.num_mel_bins}), got "
                             f"{x.shape}")
        b, frames, _ = x.shape
        # (B, T, F) -> (B, F, T, 1): height = frequency, width = time, as in AST.
        x = jnp.transpose(x, (0, 2, 1))[..., None].astype(self.dtype)
        x = nn.Conv(self.width, (self.patch_size, self.patch_size),
                    strides=(self.fstride, self.tstride), padding="VALID", dtype=self.dtype,
                    name="patch_embed")(x)
        x = x.reshape(b, -1, self.width)  # frequency-major: token = f * t_dim + t
        init = nn.initializers.truncated_normal(0.02)
        prefix = [self.param("cls_token", init, (1, 1, self.width))]
        if self.dist_token:
            prefix.append(self.param("dist_token", init, (1, 1, self.width)))
        f_dim, t_dim = self.grid()
        pos = self.param("pos_embed", init, (1, self.num_prefix + f_dim * t_dim, self.width))
        pos = posemb.resize_tokens(pos, old_grid=(f_dim, t_dim), new_grid=self.grid(frames),
                                   num_prefix=self.num_prefix, method="prefix")
        prefix = [jnp.broadcast_to(t, (b, 1, self.width)).astype(self.dtype) for t in prefix]
        return jnp.concatenate(prefix + [x], axis=1) + pos.astype(self.dtype)

    def pool(self, x):
        """(B, T, W) encoded tokens -> (B, W): mean of CLS and DIST (or CLS)."""
        return x[:, : self.num_prefix].mean(axis=1)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        """x: (B, frames, mel) -> logits (B, num_classes) in float32."""
        x = self.embed(x)
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_dim, ln_eps=self.ln_eps, dropout=self.dropout,
                      dtype=self.dtype, name=f"block_{i}")(x, deterministic=not train)
        x = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm")(x)
        x = self.pool(x)
        x = nn.LayerNorm(epsilon=self.head_ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="head_norm")(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def model_fields(model: nn.Module) -> dict[str, Any]:
    """The constructor fields of a model as a plain dict (for checkpoints and configs)."""
    out = {}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name"):
            continue
        v = getattr(model, f.name)
        out[f.name] = jnp.dtype(v).name if f.name == "dtype" else v
    return out


def create_ast(size: str = "base", **overrides) -> AST:
    """AST of a named size ("tiny", "small", "base") with field overrides."""
    if size not in SIZES:
        raise ValueError(f"unknown AST size {size!r}; choose one of {sorted(SIZES)}")
    fields = {**SIZES[size], **overrides}
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = jnp.dtype(fields["dtype"])
    known = {f.name for f in dataclasses.fields(AST)} - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown AST field(s) {unknown}; known fields: {sorted(known)}")
    return AST(**fields)
