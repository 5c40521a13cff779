"""Masked-spectrogram pretraining (Audio-MAE style) with static-shape masking.

Why this method (docs/PRETRAIN.md has the longer comparison): of the three masked-
spectrogram learners that bring a from-scratch AST close to a labelled-pretrained one,

* SSAST replaces masked patches by a mask token and runs the encoder on all of them, so a
  pretraining step costs at least a supervised step; it also needs an InfoNCE head.
* Audio-MAE encodes only the visible patches (20-25 %) and lets a light decoder restore the
  full grid to reconstruct the normalised patches (MSE on the masked ones). The encoder is
  a plain ViT/AST encoder, so its weights are an AST's.
* EAT reaches better AudioSet numbers per GPU-hour, but its targets come from an EMA
  teacher that encodes the full, unmasked clip every step (a full forward more), and it
  needs the EMA state in the trainer and several masked views per clip to pay that back.

Audio-MAE is the one whose cost falls with the mask ratio without extra training state, so
that is what this module implements. A fixed mask ratio gives a static number of visible
patches, V = N - round(mask_ratio * N) (Python's round, half to even) of the N patches: the
encoder is compiled once and its arrays really shrink to (B, prefix + V, W) - no compute
on masked patches, the same discipline as ToMe.

Parameter tree:
    encoder/{patch_embed, cls_token, dist_token, pos_embed, block_{i}, norm}
        exactly the names and shapes of `models.ast.AST` (without head_norm/head), so the
        encoder drops into an AST, or through `elastic.params_from_ast` an ElasticAST
    decoder/{embed, mask_token, pos_embed, block_{i}, norm, pred}

Patch vectors (targets and predictions) hold ph * pw values ((ph, pw) = the patch's
frequency bins and frames, `patches.patch_shape`), (p_freq, p_time) row-major, the order of
the patch-embedding kernel (ph, pw, 1, W) and of `packing.patchify`: patch n of the grid is
the conv's input window at (frequency row n // t_dim, time column n % t_dim).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fast_ast_jax.models import ast
from fast_ast_jax.patches import patch_shape


def num_visible(*, num_patches: int, mask_ratio: float) -> int:
    """Patches the encoder sees: N - round(mask_ratio * N) (a Python int)."""
    return num_patches - round(mask_ratio * num_patches)


def random_mask(key, *, batch: int, num_patches: int, num_visible: int):
    """A random patch mask per clip, static-shaped.

    Each clip's patches are ordered by a random permutation (argsort of uniform noise);
    the first `num_visible` are visible, the rest masked.

    Returns:
        visible (batch, num_visible) int32 and masked (batch, num_patches - num_visible)
        int32 patch indices; together a partition of range(num_patches) per clip.
    """
    noise = jax.random.uniform(key, (batch, num_patches))
    order = jnp.argsort(noise, axis=1).astype(jnp.int32)
    return order[:, :num_visible], order[:, num_visible:]


def extract_patches(x, *, patch_size, fstride: int, tstride: int):
    """The fbank patches exactly as AST's patch-embedding conv sees them.

    x: (B, frames, mel); patch_size: int or (frequency, time) pair (`patches.patch_shape`,
    (ph, pw)) -> (B, f_dim * t_dim, ph * pw) float32, frequency-major patches (overlapping
    when a stride is below the patch's side), each (p_freq, p_time) row-major.
    """
    x = jnp.transpose(x.astype(jnp.float32), (0, 2, 1))[:, None]  # (B, 1, F, T)
    p = jax.lax.conv_general_dilated_patches(
        x, patch_shape(patch_size), (fstride, tstride), "VALID",
        precision=jax.lax.Precision.HIGHEST)  # (B, ph*pw, f_dim, t_dim)
    return p.reshape(p.shape[0], p.shape[1], -1).transpose(0, 2, 1)


def fold_patches(patches, *, frames: int, num_mel_bins: int, patch_size, fstride: int,
                 tstride: int):
    """Inverse of `extract_patches` for plotting: (B, N, ph*pw) -> (B, frames, mel), every
    fbank value the mean of the patch values that cover it (0 where no patch does)."""
    shape = (patches.shape[0], frames, num_mel_bins)

    def extract(x):
        return extract_patches(x, patch_size=patch_size, fstride=fstride, tstride=tstride)

    # extract_patches is linear: its transpose adds every patch back where it came from.
    _, transpose = jax.vjp(extract, jnp.zeros(shape, jnp.float32))
    total, = transpose(patches.astype(jnp.float32))
    count, = transpose(jnp.ones(patches.shape, jnp.float32))
    return total / jnp.maximum(count, 1.0)


def masked_mse(pred, target, masked, *, norm_pix: bool):
    """Per-clip reconstruction loss: mean squared error over the masked patches only.

    pred, target: (B, N, P) patch vectors; masked: (B, M) patch indices -> (B,) float32.
    norm_pix: targets normalised per patch (zero mean, unit variance; MAE's norm_pix_loss).
    """
    target = target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    err = (pred.astype(jnp.float32) - target) ** 2  # (B, N, P)
    err = jnp.take_along_axis(err.mean(axis=-1), masked, axis=1)  # (B, M)
    return err.mean(axis=1)


class Encoder(ast.Backbone):
    """The AST encoder without a head, optionally on a subset of the patches.

    Fields: `ast.Backbone`'s (same meaning, same parameters as the AST's). Returns
    normalised tokens (B, prefix + N', W): the class tokens, then the patch tokens kept by
    `visible`.
    """

    @nn.compact
    def __call__(self, x, *, visible=None):
        """x: (B, frames, mel); visible: (B, V) patch indices or None (all N patches).

        Returns (B, prefix + V, W) (or prefix + N) tokens after the final LayerNorm."""
        prefix, patches = ast.embed_tokens(self, x)
        if visible is not None:  # positions are added already: gather keeps them
            patches = jnp.take_along_axis(patches, visible[..., None], axis=1)
        x = jnp.concatenate([prefix, patches], axis=1)
        for i in range(self.depth):
            x = ast.Block(self.num_heads, self.mlp_dim, ln_eps=self.ln_eps, dtype=self.dtype,
                          name=f"block_{i}")(x)
        return nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                            name="norm")(x)


class Decoder(nn.Module):
    """Light transformer that restores the full patch grid and predicts every patch.

    Encoded tokens are projected to `width`; the visible patches go back to their grid
    places, every masked place gets the learned mask token, all get the decoder's own
    position embedding; `depth` blocks and a linear layer predict each patch's values.
    """

    width: int
    depth: int
    num_heads: int
    num_prefix: int
    num_patches: int
    patch_dim: int
    ln_eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, visible):
        """x: (B, prefix + V, W_enc) encoded; visible: (B, V) -> (B, N, patch_dim) f32."""
        b = x.shape[0]
        x = nn.Dense(self.width, dtype=self.dtype, name="embed")(x)
        init = nn.initializers.truncated_normal(0.02)
        mask_token = self.param("mask_token", init, (1, 1, self.width)).astype(self.dtype)
        grid = jnp.broadcast_to(mask_token, (b, self.num_patches, self.width))
        grid = grid.at[jnp.arange(b)[:, None], visible].set(x[:, self.num_prefix:])
        x = jnp.concatenate([x[:, :self.num_prefix], grid], axis=1)
        pos = self.param("pos_embed", init, (1, self.num_prefix + self.num_patches,
                                             self.width))
        x = x + pos.astype(self.dtype)
        for i in range(self.depth):
            x = ast.Block(self.num_heads, 4 * self.width, ln_eps=self.ln_eps,
                          dtype=self.dtype, name=f"block_{i}")(x)
        x = nn.LayerNorm(epsilon=self.ln_eps, use_fast_variance=False, dtype=self.dtype,
                         name="norm")(x[:, self.num_prefix:])
        return nn.Dense(self.patch_dim, dtype=self.dtype, name="pred")(x).astype(jnp.float32)


class MaeOutput(NamedTuple):
    """What a pretraining step and its plots need from `MAE.__call__`.

    loss: (B,) float32 per-clip MSE over the masked patches (weight padded clips out).
    pred: (B, N, ph*pw) float32 predicted patches (normalised-patch space with norm_pix_loss).
    target: (B, N, ph*pw) float32 the input's patches (`extract_patches`, not normalised).
    visible, masked: (B, V), (B, M) int32 patch indices (`random_mask`).
    """

    loss: Any
    pred: Any
    target: Any
    visible: Any
    masked: Any


class MAE(ast.Backbone):
    """Masked autoencoder over fbank patches whose encoder is an AST's (module docstring).

    Attributes:
        width, depth, num_heads, mlp_dim, patch_size, fstride, tstride, num_mel_bins,
        frames, dist_token, ln_eps, dtype: the encoder, `ast.Backbone`'s fields as in
            `ast.AST` (sizes: ast.SIZES, `create_mae`). Pretraining inputs have exactly
            `frames` frames.
        mask_ratio: fraction of patches hidden from the encoder, in [0, 1).
        decoder_width, decoder_depth, decoder_heads: the decoder transformer (MLP 4x).
        norm_pix_loss: reconstruct per-patch normalised targets (Audio-MAE's choice).
    """

    mask_ratio: float = 0.8
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def setup(self):
        self.encoder = Encoder(**self.backbone_fields())
        self.decoder = Decoder(self.decoder_width, self.decoder_depth, self.decoder_heads,
                               num_prefix=self.num_prefix, num_patches=self.num_patches,
                               patch_dim=self.patch_dim, ln_eps=self.ln_eps,
                               dtype=self.dtype)

    @property
    def patch_dim(self) -> int:
        """Values per patch vector (target and prediction): ph * pw."""
        ph, pw = patch_shape(self.patch_size)
        return ph * pw

    @property
    def num_patches(self) -> int:
        f_dim, t_dim = self.grid()
        return f_dim * t_dim

    @property
    def num_visible(self) -> int:
        """Patches the encoder sees per clip (static; raises on a bad mask_ratio)."""
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAE.mask_ratio={self.mask_ratio} must be in [0, 1)")
        return num_visible(num_patches=self.num_patches, mask_ratio=self.mask_ratio)

    # The static-plan interface of `ast.AST` that `bench.ast_macs` counts: the encoder's
    # blocks see prefix + V tokens, the conv embeds all N patches, there is no head.
    num_classes = 0

    def token_plan(self, frames: int | None = None) -> list[ast.LayerPlan]:
        tokens = self.num_prefix + self.num_visible
        return [ast.LayerPlan(tokens, None, 0, tokens)] * self.depth

    def prefix_only_last_block(self, frames: int | None = None) -> bool:
        return False  # the decoder reads every encoded token

    def decoder_macs(self) -> int:
        """Analytical MACs of the decoder on one clip, counted as `bench.ast_macs` counts
        a block (T tokens, width W: qkv 3TW², scores and values 2T²W, out TW², MLP 8TW²):
        the embedding (prefix + V)·W_enc·W, the blocks on T = prefix + N tokens, and the
        prediction N·W·ph·pw."""
        w, t = self.decoder_width, self.num_prefix + self.num_patches
        embed = (self.num_prefix + self.num_visible) * self.width * w
        blocks = self.decoder_depth * (12 * t * w * w + 2 * t * t * w)
        return embed + blocks + self.num_patches * w * self.patch_dim

    def __call__(self, x, *, key=None) -> MaeOutput:
        """x: (B, frames, mel) normalised fbank; key: PRNG key of the mask (None: the fixed
        PRNGKey(0), as evaluation and initialisation use) -> MaeOutput."""
        if key is None:
            key = jax.random.PRNGKey(0)
        if x.ndim != 3 or x.shape[1:] != (self.frames, self.num_mel_bins):
            raise ValueError(f"MAE pretrains on inputs (batch, {self.frames}, "
                             f"{self.num_mel_bins}) (MAE.frames, num_mel_bins), got "
                             f"{x.shape}")
        b = x.shape[0]
        visible, masked = random_mask(key, batch=b, num_patches=self.num_patches,
                                      num_visible=self.num_visible)
        pred = self.decoder(self.encoder(x, visible=visible), visible=visible)
        target = extract_patches(x, patch_size=self.patch_size, fstride=self.fstride,
                                 tstride=self.tstride)
        loss = masked_mse(pred, target, masked, norm_pix=self.norm_pix_loss)
        return MaeOutput(loss, pred, target, visible, masked)

    def encode(self, x):
        """The encoder on all patches, no masking (embeddings, linear probes).

        x: (B, frames, mel) (any frame count, positions adapted as in AST) -> clip
        embedding (B, W) (mean of the class tokens, as `AST.pool`) and patch tokens
        (B, f_dim * t_dim, W), both after the final LayerNorm, float32.
        """
        tokens = self.encoder(x).astype(jnp.float32)
        return tokens[:, :self.num_prefix].mean(axis=1), tokens[:, self.num_prefix:]


def encoder_params(params) -> dict[str, Any]:
    """The AST-named encoder subtree of an MAE's params ({"encoder": ..., "decoder": ...}
    or a variables dict {"params": {...}})."""
    params = params.get("params", params)
    return dict(params["encoder"])


def create_mae(size: str = "base", **overrides) -> MAE:
    """MAE whose encoder has a named AST size ("tiny", "small", "base"), with overrides."""
    return ast.create_ast(size, cls=MAE, **overrides)
