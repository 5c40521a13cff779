"""Waveform in, logits (or embeddings) out: a checkpoint as one serialised StableHLO
function (jax.export).

    python -m fast_ast_jax.export --checkpoint WORKDIR --out model.jaxexport \\
        [--embed [--tokens]] [--batch N] [--seconds S] [--platforms cpu,cuda,tpu]

The exported function takes
    waves (B, samples) float32 mono waveforms at the checkpoint's sample rate, each clip
        zero-padded (or cut) at the end to samples = S seconds (default: the trained
        length, target_frames' worth);
    lengths (B,) int32, each clip's true sample count (<= samples),
and returns logits (B, num_labels) float32: the on-device Kaldi front-end
(fast_ast_jax.audio.fbank_jax, what the host front-end computes to ~2e-5) and the model,
with the parameters baked in as constants. With --embed it returns the clip embedding
(B, W) float32 instead, and with --tokens the pair (embedding (B, W), patch tokens
(B, N, W), frequency-major), both as `python -m fast_ast_jax.embed` computes them for one
window (fast_ast_jax.embed.embedding, the same function): from an AST checkpoint (the
pooled features before its head) or a masked-pretraining (mae) one, which has no head and
is exported only with --embed. B is symbolic (any batch size) unless --batch
fixes it. A JSON file next to the artifact (OUT.json) holds the labels (empty with --embed),
the front-end, the input spec and what the function outputs ("outputs"; with --embed also
"embedding_dim" W and with --tokens "token_grid" (f_dim, t_dim)), so a server needs only jax (`jax.export.deserialize(...).call(...)`, see
`load`), not this package; decoding and resampling to the sample rate stay with the caller
(e.g. fast_ast_jax.audio.load_audio). A clip longer than `samples` is cut: score long
audio by windows (fast_ast_jax.windows / predict.py) or export with more --seconds for a
model trained on longer inputs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fast_ast_jax import checkpoints, cli, embed
from fast_ast_jax.audio.fbank_jax import device_features, samples_for_frames
from fast_ast_jax.bundle import Bundle

PLATFORMS = ("cpu", "cuda", "tpu")


def waveform_function(bundle: Bundle, *, where: str, embedding: bool = False,
                      tokens: bool = False) -> tuple[Callable, dict]:
    """(fn, spec): fn(waves (B, samples) float32, lengths (B,) int32), jittable: the
    front-end on the device, then the checkpoint's model -> logits (B, C) float32; with
    `embedding`, its clip embedding (B, W) (fast_ast_jax.embed.embedding); with `tokens`
    too, (embedding (B, W), patch tokens (B, N, W)). `spec`: the entries of the artifact's
    spec that say what fn returns (module docstring). `where` names the checkpoint in
    errors."""
    if embedding:
        apply, params = embed.embedding(bundle, where=where)
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
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((b, samples), jnp.float32),
        jax.ShapeDtypeStruct((b,), jnp.int32))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exported.serialize())
    spec = {"frontend": fe.to_dict(), "samples": samples, "sample_rate": fe.sample_rate,
            "batch": batch, "platforms": list(platforms), "checkpoint_step": restored.step,
            "inputs": ["waves (B, samples) float32", "lengths (B,) int32"], **outputs}
    Path(f"{out}.json").write_text(json.dumps(spec, indent=1))
    return spec


def load(path) -> tuple[Callable[[np.ndarray, np.ndarray], jax.Array], dict]:
    """(call(waves, lengths) -> spec["outputs"], spec) of an exported artifact."""
    exported = jax.export.deserialize(bytearray(Path(path).read_bytes()))
    spec = json.loads(Path(f"{path}.json").read_text())
    return exported.call, spec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="training workdir")
    parser.add_argument("--out", required=True, help="artifact path, e.g. model.jaxexport")
    parser.add_argument("--batch", type=int, default=None,
                        help="fixed batch size (default: any)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="input length (default: the trained length)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help="comma-separated lowering targets")
    parser.add_argument("--embed", action="store_true",
                        help="export the clip embedding (B, W) instead of the logits (AST or "
                        "masked-pretraining checkpoints)")
    parser.add_argument("--tokens", action="store_true",
                        help="with --embed: also output the patch tokens (B, N, W)")
    parser.add_argument("--debug", action="store_true", help="tracebacks of usage errors")
    args = parser.parse_args(argv)
    with cli.user_errors(debug=args.debug):
        spec = export_checkpoint(args.checkpoint, args.out, batch=args.batch,
                                 seconds=args.seconds,
                                 platforms=tuple(p for p in args.platforms.split(",") if p),
                                 embedding=args.embed, tokens=args.tokens)
    print(f"wrote {args.out} (+ .json): waves ({spec['batch'] or 'B'}, {spec['samples']}) at "
          f"{spec['sample_rate']} Hz + lengths -> {'; '.join(spec['outputs'])}, "
          f"for {','.join(spec['platforms'])}")


if __name__ == "__main__":
    main()
