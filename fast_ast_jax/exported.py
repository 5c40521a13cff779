"""A checkpoint as one serialised function, waveform in, logits (or embeddings) out
(jax.export, StableHLO), and back.

    >>> from fast_ast_jax import exported
    >>> exported.export_checkpoint("workdirs/fsdd", "fsdd.jaxexport")
    >>> call, spec = exported.load("fsdd.jaxexport")
    >>> logits = call(waves, lengths)  # (B, samples) f32, (B,) int32 -> (B, num_labels)

The exported function takes
    waves (B, samples) float32 mono waveforms at the checkpoint's sample rate, each clip
        zero-padded (or cut) at the end to `samples` (default: the trained length,
        target_frames' worth);
    lengths (B,) int32, each clip's true sample count (<= samples),
and returns logits (B, num_labels) float32: the on-device Kaldi front-end
(fast_ast_jax.audio.fbank_jax, what the host front-end computes to ~2e-5) and the model,
with the parameters baked in as constants. With `embedding` it returns the clip embedding
(B, W) float32 instead, and with `tokens` the pair (embedding (B, W), patch tokens
(B, N, W), frequency-major), both as `python -m fast_ast_jax.embed` computes them for one
window (fast_ast_jax.embeddings.embedding, the same function): from an AST checkpoint (the
pooled features before its head) or a masked-pretraining (mae) one, which has no head and
is exported only with `embedding`. B is symbolic (any batch size) unless `batch` fixes it.
A JSON file next to the artifact (OUT.json) holds the labels (empty with `embedding`), the
front-end, the input spec and what the function outputs ("outputs"; with `embedding` also
"embedding_dim" W and with `tokens` "token_grid" (f_dim, t_dim)), so a server needs only
jax (`jax.export.deserialize(...).call(...)`, see `load`), not this package; decoding and
resampling to the sample rate stay with the caller (e.g. fast_ast_jax.audio.load_audio). A
clip longer than `samples` is cut: score long audio by windows (fast_ast_jax.windows,
fast_ast_jax.inference) or export more seconds for a model trained on longer inputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fast_ast_jax import checkpoints, embeddings
from fast_ast_jax.audio.fbank_jax import device_features, samples_for_frames
from fast_ast_jax.bundle import Bundle

PLATFORMS = ("cpu", "cuda", "tpu")


def waveform_function(bundle: Bundle, *, where: str, embedding: bool = False,
                      tokens: bool = False) -> tuple[Callable, dict]:
    """(fn, spec): fn(waves (B, samples) float32, lengths (B,) int32), jittable: the
    front-end on the device, then the checkpoint's model -> logits (B, C) float32; with
    `embedding`, its clip embedding (B, W) (fast_ast_jax.embeddings.embedding); with
    `tokens` too, (embedding (B, W), patch tokens (B, N, W)). `spec`: the entries of the artifact's
    spec that say what fn returns (module docstring). `where` names the checkpoint in
    errors."""
    if embedding:
        apply, params = embeddings.embedding(bundle, where=where)
        width, grid = bundle.model.width, bundle.model.grid()
        spec = {"labels": [], "embedding_dim": width,
                "outputs": [f"embedding (B, {width}) float32: the clip embedding"]}
        if tokens:
            spec["token_grid"] = list(grid)
            spec["outputs"].append(
                f"tokens (B, {grid[0] * grid[1]}, {width}) float32: the patch tokens, "
                f"frequency-major over the {grid[0]} x {grid[1]} grid")
        run = (lambda x: apply(params, x)) if tokens else (lambda x: apply(params, x)[0])
    else:
        model, params = bundle.model, bundle.params
        spec = {"labels": list(bundle.labels), "multi_label": bundle.loss == "sigmoid",
                "outputs": ["logits (B, num_labels) float32"]}
        run = lambda x: model.apply({"params": params}, x, train=False).astype(jnp.float32)
    fe = bundle.frontend
    return (lambda waves, lengths: run(device_features(waves, frontend=fe, lengths=lengths)),
            spec)


def export_checkpoint(checkpoint, out, *, batch: int | None = None,
                      seconds: float | None = None,
                      platforms: tuple[str, ...] = PLATFORMS, embedding: bool = False,
                      tokens: bool = False) -> dict:
    """Serialise the checkpoint's waveform classifier (or embedding) to `out`, its spec to
    `out`.json.

    Args:
        checkpoint: training workdir or checkpoints directory.
        out: artifact path (the bytes of jax.export.Exported.serialize()).
        batch: fixed batch size; None exports a symbolic batch dimension.
        seconds: input length; None = the trained length (target_frames' worth).
        platforms: lowering targets ("cpu", "cuda", "tpu", "rocm").
        embedding: export the clip embedding instead of the logits (an AST or mae
            checkpoint); tokens: with the patch tokens too (`waveform_function`).
    Returns:
        the spec written to `out`.json.
    """
    if tokens and not embedding:
        raise ValueError("--tokens exports patch tokens, which come with --embed: add --embed")
    restored = (checkpoints.load(checkpoint) if embedding
                else checkpoints.load_classifier(checkpoint))
    fe = restored.frontend
    samples = (samples_for_frames(fe.target_frames, frontend=fe) if seconds is None
               else int(round(seconds * fe.sample_rate)))
    if samples < fe.window_size:
        raise ValueError(f"--seconds={seconds} gives {samples} samples, less than one "
                         f"analysis window ({fe.window_size} samples at {fe.sample_rate} Hz)")
    fn, outputs = waveform_function(restored, where=str(checkpoint), embedding=embedding,
                                    tokens=tokens)
    b = jax.export.symbolic_shape("b")[0] if batch is None else int(batch)
    artifact = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((b, samples), jnp.float32),
        jax.ShapeDtypeStruct((b,), jnp.int32))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(artifact.serialize())
    spec = {"frontend": fe.to_dict(), "samples": samples, "sample_rate": fe.sample_rate,
            "batch": batch, "platforms": list(platforms), "checkpoint_step": restored.step,
            "inputs": ["waves (B, samples) float32", "lengths (B,) int32"], **outputs}
    Path(f"{out}.json").write_text(json.dumps(spec, indent=1))
    return spec


def load(path) -> tuple[Callable[[np.ndarray, np.ndarray], jax.Array], dict]:
    """(call(waves, lengths) -> spec["outputs"], spec) of an exported artifact."""
    artifact = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    spec = json.loads(Path(f"{path}.json").read_text())
    return artifact.call, spec
