"""Waveform in, logits out: a checkpoint as one serialised StableHLO function (jax.export).

    python -m fast_ast_jax.export --checkpoint WORKDIR --out model.jaxexport \\
        [--batch N] [--seconds S] [--platforms cpu,cuda,tpu]

The exported function takes
    waves (B, samples) float32 mono waveforms at the checkpoint's sample rate, each clip
        zero-padded (or cut) at the end to samples = S seconds (default: the trained
        length, target_frames' worth);
    lengths (B,) int32, each clip's true sample count (<= samples),
and returns logits (B, num_labels) float32: the on-device Kaldi front-end
(fast_ast_jax.audio.fbank_jax, what the host front-end computes to ~2e-5) and the model,
with the parameters baked in as constants. B is symbolic (any batch size) unless --batch
fixes it. A JSON file next to the artifact (OUT.json) holds the labels, the front-end and
the input spec, so a server needs only jax (`jax.export.deserialize(...).call(...)`, see
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

from fast_ast_jax import checkpoints, cli
from fast_ast_jax.audio.fbank_jax import device_features, samples_for_frames
from fast_ast_jax.audio.frontend import FrontEnd

PLATFORMS = ("cpu", "cuda", "tpu")


def waveform_classifier(model, params, *, frontend: FrontEnd
                        ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(waves (B, samples) float32, lengths (B,) int32) -> logits (B, C), jittable."""

    def classify(waves, lengths):
        x = device_features(waves, frontend=frontend, lengths=lengths)
        return model.apply({"params": params}, x, train=False).astype(jnp.float32)

    return classify


def export_checkpoint(checkpoint, out, *, batch: int | None = None,
                      seconds: float | None = None,
                      platforms: tuple[str, ...] = PLATFORMS) -> dict:
    """Serialise the checkpoint's waveform classifier to `out`, its spec to `out`.json.

    Args:
        checkpoint: training workdir or checkpoints directory.
        out: artifact path (the bytes of jax.export.Exported.serialize()).
        batch: fixed batch size; None exports a symbolic batch dimension.
        seconds: input length; None = the trained length (target_frames' worth).
        platforms: lowering targets ("cpu", "cuda", "tpu", "rocm").
    Returns:
        the spec written to `out`.json.
    """
    restored = checkpoints.load_classifier(checkpoint)
    fe = restored.frontend
    samples = (samples_for_frames(fe.target_frames, frontend=fe) if seconds is None
               else int(round(seconds * fe.sample_rate)))
    if samples < fe.window_size:
        raise ValueError(f"--seconds={seconds} gives {samples} samples, less than one "
                         f"analysis window ({fe.window_size} samples at {fe.sample_rate} Hz)")
    b = jax.export.symbolic_shape("b")[0] if batch is None else int(batch)
    fn = jax.jit(waveform_classifier(restored.model, restored.params, frontend=fe))
    exported = jax.export.export(fn, platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((b, samples), jnp.float32),
        jax.ShapeDtypeStruct((b,), jnp.int32))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exported.serialize())
    spec = {"labels": list(restored.labels), "frontend": fe.to_dict(), "samples": samples,
            "sample_rate": fe.sample_rate, "batch": batch, "platforms": list(platforms),
            "multi_label": restored.loss == "sigmoid", "checkpoint_step": restored.step,
            "inputs": ["waves (B, samples) float32", "lengths (B,) int32"],
            "outputs": ["logits (B, num_labels) float32"]}
    Path(f"{out}.json").write_text(json.dumps(spec, indent=1))
    return spec


def load(path) -> tuple[Callable[[np.ndarray, np.ndarray], jax.Array], dict]:
    """(call(waves, lengths) -> logits, spec) of an exported artifact."""
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
    parser.add_argument("--debug", action="store_true", help="tracebacks of usage errors")
    args = parser.parse_args(argv)
    with cli.user_errors(debug=args.debug):
        spec = export_checkpoint(args.checkpoint, args.out, batch=args.batch,
                                 seconds=args.seconds,
                                 platforms=tuple(p for p in args.platforms.split(",") if p))
    print(f"wrote {args.out} (+ .json): waves ({spec['batch'] or 'B'}, {spec['samples']}) at "
          f"{spec['sample_rate']} Hz + lengths -> logits over {len(spec['labels'])} labels, "
          f"for {','.join(spec['platforms'])}")


if __name__ == "__main__":
    main()
