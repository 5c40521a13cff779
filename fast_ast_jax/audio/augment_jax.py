"""Training augmentation on batched features in JAX, and the on-device input step.

The batched counterparts of fast_ast_jax.audio.augment (same masks, fill value, mixup
weights and noise; random draws from a JAX key instead of NumPy, so the same in
distribution, not draw for draw), and `device_batch`, which turns a batch of waveforms into
the model's batch inside the jitted train / eval step (config.frontend.on_device).

Mixup differs in one way from the host pipeline: the partner of a mixed clip is another
clip of the same batch (a random permutation), not any clip of the dataset, since only the
batch is on the device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fast_ast_jax.audio.augment import Augment
from fast_ast_jax.audio.fbank_jax import device_features
from fast_ast_jax.audio.features import pad_value
from fast_ast_jax.audio.frontend import FrontEnd


def _band_mask(key: jax.Array, *, batch: int, size: int, param: int) -> jax.Array:
    """(batch, size) bool: per row, one band of width ~ U[0, min(param, size + 1)) starting
    at ~ U[0, size - width]."""
    wkey, skey = jax.random.split(key)
    width = jax.random.randint(wkey, (batch, 1), 0, min(param, size + 1))
    start = jnp.floor(jax.random.uniform(skey, (batch, 1)) * (size - width + 1)).astype(
        jnp.int32)
    pos = jnp.arange(size)[None, :]
    return (pos >= start) & (pos < start + width)


def spec_augment(x: jax.Array, *, key: jax.Array, freqm: int, timem: int, fill: float
                 ) -> jax.Array:
    """One frequency mask and one time mask per example (as augment.spec_augment).

    x: (B, frames, bins); freqm, timem: maximum widths (0 disables); fill: value of masked
    cells (the normalised value of a zero log-mel). Returns (B, frames, bins).
    """
    batch, frames, bins = x.shape
    fkey, tkey = jax.random.split(key)
    if freqm > 0:
        x = jnp.where(_band_mask(fkey, batch=batch, size=bins, param=freqm)[:, None, :],
                      fill, x)
    if timem > 0:
        x = jnp.where(_band_mask(tkey, batch=batch, size=frames, param=timem)[:, :, None],
                      fill, x)
    return x


def noise_and_roll(x: jax.Array, *, key: jax.Array, max_shift: int = 10) -> jax.Array:
    """AST's SpeechCommands augmentation per example (as augment.noise_and_roll): add
    U * u / 10 noise, roll time by a shift in [-max_shift, max_shift). x: (B, frames, bins)."""
    nkey, akey, skey = jax.random.split(key, 3)
    batch, frames, _ = x.shape
    x = x + (jax.random.uniform(nkey, x.shape)
             * jax.random.uniform(akey, (batch, 1, 1)) / 10)
    shift = jax.random.randint(skey, (batch,), -max_shift, max_shift)
    index = (jnp.arange(frames)[None, :] - shift[:, None]) % frames  # out[t] = x[t - shift]
    return jnp.take_along_axis(x, index[:, :, None], axis=1)


def mixup(arrays: dict[str, jax.Array], *, key: jax.Array, prob: float, alpha: float
          ) -> dict[str, jax.Array]:
    """Mix each example, with probability `prob`, with a random other one of the batch.

    arrays: name -> (B, ...) float arrays mixed with the same weight (features, targets,
    teacher predictions: mixing predictions, not logits, as data.pipeline does). Per
    example lam ~ Beta(alpha, alpha); a mixed row is lam * row + (1 - lam) * partner.
    Returns the same names.
    """
    batch = next(iter(arrays.values())).shape[0]
    pkey, bkey, ukey = jax.random.split(key, 3)
    partner = jax.random.permutation(pkey, batch)
    lam = jax.random.beta(bkey, alpha, alpha, (batch,))
    lam = jnp.where(jax.random.uniform(ukey, (batch,)) < prob, lam, 1.0)

    def mix(a):
        w = lam.reshape((batch,) + (1,) * (a.ndim - 1)).astype(a.dtype)
        return w * a + (1 - w) * a[partner]

    return {k: mix(a) for k, a in arrays.items()}


def device_batch(batch: dict, *, frontend: FrontEnd, augment: Augment | None = None,
                 key: jax.Array | None = None) -> dict:
    """The model's batch from a waveform batch, inside a jitted step.

    Args:
        batch: wave (B, samples) float32 waveforms at frontend.sample_rate zero-padded to
            one length, wave_len (B,) int32 true lengths, and the other entries (y, mask,
            teacher_probs, ...), passed through (y and teacher_probs mixed by mixup).
        frontend: front-end parameters (static).
        augment: the training augmentation, or None (eval: features only).
        key: PRNG key, required for dither or augmentation.
    Returns:
        the batch with x (B, target_frames, bins) in place of wave / wave_len.
    """
    needs_key = frontend.dither > 0 or augment is not None
    if needs_key and key is None:
        raise ValueError("device_batch needs key= for dither or augmentation")
    keys = jax.random.split(key, 4) if needs_key else [None] * 4
    out = {k: v for k, v in batch.items() if k not in ("wave", "wave_len")}
    x = device_features(batch["wave"], frontend=frontend, lengths=batch["wave_len"],
                        key=keys[0] if frontend.dither > 0 else None)
    if augment is not None:
        if augment.mixup > 0:
            mixed = mixup({"x": x, **{k: out[k] for k in ("y", "teacher_probs") if k in out}},
                          key=keys[1], prob=augment.mixup, alpha=augment.mixup_alpha)
            x = mixed.pop("x")
            out.update(mixed)
        x = spec_augment(x, key=keys[2], freqm=augment.freqm, timem=augment.timem,
                         fill=pad_value(frontend))
        if augment.noise:
            x = noise_and_roll(x, key=keys[3])
    out["x"] = x
    return out
