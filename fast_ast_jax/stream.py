"""Class labels of a live stream, one line per hop: a microphone, raw PCM on stdin, or a
file played as a stream.

    python -m fast_ast_jax.stream --checkpoint WORKDIR --mic [--device D]
    arecord -q -f S16_LE -r 16000 -c 1 -t raw | python -m fast_ast_jax.stream --checkpoint WORKDIR -
    sox in.mp3 -t raw -e signed -b 16 -r 16000 -c 1 - | python -m fast_ast_jax.stream --checkpoint WORKDIR -
    python -m fast_ast_jax.stream --checkpoint WORKDIR --file clip.wav [--realtime]
    python -m fast_ast_jax.stream --list_devices

    options: [--format s16le|f32le] [--sample_rate HZ] [--channels C] (stdin; the last two
        also the microphone) [--hop_s S | --hop_frames N] [--smooth N] [--top_k K] [--jsonl]
        [--block_s S] [--tome_r R] [--keep_rate K] [--debug]

The window is the checkpoint's trained input (target_frames frames); every hop (default
half a window or 0.5 s, whichever is shorter; --hop_s is rounded to whole frames) the
latest window is scored by the model's compiled forward, one static shape for the whole
stream (fast_ast_jax.streaming: before the stream holds a window, the stream so far is
scored padded as a short training clip is; a finite stream ends with a window at its last
frame). Each line on stdout, flushed at once (so it works in a pipe):

       2.135 s  low 0.981, high 0.012

the stream second at the end of the window, then the --top_k labels and scores (softmax;
sigmoid per class for a multi-label checkpoint), averaged over the last --smooth hops.
--jsonl writes {"start": s, "end": s, "labels": [...], "scores": [...]} per hop instead.
A header on stderr gives the window, the hop and the latency: a change of label is
reported within window + hop of it, plus the compute time of a hop.

Stdin is raw interleaved PCM at --sample_rate (default: the checkpoint's) with --channels
(default 1) of --format (s16le, f32le); another rate than the checkpoint's is resampled on
the fly (soxr's streaming resampler). A file may have any format, rate and channels
(decoded by fast_ast_jax.audio.io); it is played as fast as it can be scored, or at the
real rate with --realtime. Live input (the microphone, --realtime) keeps up: when a hop
takes longer to score than the audio it covers, the hops that fell behind are skipped (a
warning says so once) and the next line scores the latest window. The microphone needs
the optional sounddevice package (`pip install "fast_ast_jax[mic]"`) and PortAudio;
--list_devices shows the devices.

Exit status: 0 at the end of the stream; 130 after Ctrl-C (the lines printed are complete;
stderr ends the line and says how much was heard); 2 for a usage or input error (a missing
or masked-pretraining checkpoint, a microphone that cannot open, a stream that ends inside
a sample frame or before one frame, NaN samples, bad options): one `error:` line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator, Sequence

import numpy as np

from fast_ast_jax import checkpoints, cli, streaming
from fast_ast_jax.models.ast import Encoder
from fast_ast_jax.windows import scorer


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fast_ast_jax.stream",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("stdin", nargs="?", metavar="-",
                        help="read raw PCM from stdin (or give --file / --mic)")
    parser.add_argument("--checkpoint", help="training workdir, checkpoints/, or an HF / "
                        ".pth weights path")
    parser.add_argument("--file", help="an audio file played as a stream")
    parser.add_argument("--realtime", action="store_true",
                        help="play --file at the real rate (default: as fast as possible)")
    parser.add_argument("--mic", action="store_true", help="read a microphone (sounddevice)")
    parser.add_argument("--device", help="microphone: device index or name substring")
    parser.add_argument("--list_devices", "--list-devices", action="store_true",
                        help="print the audio devices and exit")
    parser.add_argument("--format", choices=sorted(streaming.PCM_FORMATS), default=None,
                        help="stdin sample format (default s16le)")
    parser.add_argument("--sample_rate", type=int, default=None,
                        help="stdin / microphone rate in Hz (default: the checkpoint's)")
    parser.add_argument("--channels", type=int, default=None,
                        help="stdin / microphone channels, averaged (default 1)")
    hop = parser.add_mutually_exclusive_group()
    hop.add_argument("--hop_s", type=float, default=None, help="seconds between windows")
    hop.add_argument("--hop_frames", type=int, default=None, help="frames between windows")
    parser.add_argument("--smooth", type=int, default=1,
                        help="report the mean scores of the last N hops (default 1: none)")
    parser.add_argument("--top_k", type=int, default=1, help="labels per line")
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per hop")
    parser.add_argument("--block_s", type=float, default=0.05,
                        help="seconds of audio per read (stdin, microphone, file)")
    parser.add_argument("--tome_r", type=int, default=None, help="ToMe: tokens merged per block")
    parser.add_argument("--keep_rate", type=float, default=None, help="TopK pruning keep rate")
    parser.add_argument("--debug", action="store_true", help="tracebacks for input errors")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Options that cannot work together or values out of range -> cli.fail."""
    sources = [name for name, given in (("-", args.stdin is not None), ("--file", args.file),
                                        ("--mic", args.mic)) if given]
    if args.stdin not in (None, "-"):
        cli.fail(f"{args.stdin}: give '-' to read PCM from stdin, --file PATH for a file, or "
                 "--mic")
    if len(sources) != 1:
        cli.fail(f"{' and '.join(sources) or 'no input'}: give exactly one of '-' (raw PCM "
                 "on stdin), --file PATH or --mic")
    if args.checkpoint is None:
        cli.fail("--checkpoint is required (a training workdir, or HF / .pth weights)")
    if args.realtime and not args.file:
        cli.fail("--realtime paces --file; a microphone or stdin arrives at its own pace")
    if args.file and (args.format or args.sample_rate or args.channels):
        cli.fail("--format / --sample_rate / --channels describe raw PCM on stdin (the last "
                 "two also the microphone); a file's own header gives them")
    if args.mic and args.format:
        cli.fail("--format describes raw PCM on stdin; the microphone is read as float32")
    if args.device is not None and not args.mic:
        cli.fail("--device picks the microphone: add --mic")
    for flag, value, least in (("--sample_rate", args.sample_rate, 1),
                               ("--channels", args.channels, 1), ("--smooth", args.smooth, 1),
                               ("--top_k", args.top_k, 1), ("--hop_frames", args.hop_frames, 1)):
        if value is not None and value < least:
            cli.fail(f"{flag}={value}: must be >= {least}")
    for flag, value in (("--hop_s", args.hop_s), ("--block_s", args.block_s)):
        if value is not None and not value > 0:
            cli.fail(f"{flag}={value}: must be > 0 seconds")


def _chunks(args: argparse.Namespace, *, sample_rate: int) -> Iterator[np.ndarray]:
    """The input's mono chunks at `sample_rate` (the --file's are resampled on load)."""
    block = max(1, round(args.block_s * sample_rate))
    if args.file:
        chunks = streaming.file_chunks(args.file, sample_rate=sample_rate, block_samples=block)
        return streaming.paced(chunks, sample_rate=sample_rate) if args.realtime else chunks
    channels = args.channels or 1
    if args.mic:
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        return streaming.mic_chunks(sample_rate=sample_rate, channels=channels,
                                    device=device, block_samples=block)
    if sys.stdin is None or sys.stdin.isatty():
        cli.fail("'-' reads raw PCM from stdin, which is a terminal: pipe audio into it "
                 "(arecord -q -f S16_LE -r 16000 -c 1 -t raw | python -m fast_ast_jax.stream "
                 "--checkpoint W -), or use --file / --mic")
    return streaming.pcm_chunks(sys.stdin.buffer, format=args.format or "s16le",
                                channels=channels, sample_rate=sample_rate,
                                block_samples=block)


def _line(hop: streaming.Hop, *, labels: Sequence[str], top_k: int, jsonl: bool) -> str:
    best = np.argsort(-hop.scores, kind="stable")[:top_k]
    if jsonl:
        return json.dumps({"start": round(hop.start, 6), "end": round(hop.end, 6),
                           "labels": [labels[i] for i in best],
                           "scores": [float(hop.scores[i]) for i in best]})
    return f"{hop.end:10.3f} s  " + ", ".join(f"{labels[i]} {hop.scores[i]:.3f}" for i in best)


def _stream(args: argparse.Namespace) -> Iterator[float]:
    """Load, check and stream: print a line per hop and yield its end (stream seconds)."""
    _check(args)
    overrides = {k: v for k, v in (("tome_r", args.tome_r), ("prune_keep_rate", args.keep_rate))
                 if v is not None}
    with cli.user_errors(debug=args.debug):
        bundle = checkpoints.load_classifier(args.checkpoint)
    if overrides and not isinstance(bundle.model, Encoder):
        cli.fail(f"--tome_r / --keep_rate need an AST or ElasticAST; {args.checkpoint} holds "
                 f"a {type(bundle.model).__name__}")
    with cli.user_errors(debug=args.debug):
        sc = scorer(bundle, batch_size=1, **overrides)
        fe = sc.frontend
        hop_frames = args.hop_frames or (streaming.hop_frames_for(args.hop_s, frontend=fe)
                                         if args.hop_s else streaming.default_hop_frames(fe))
        rate = fe.sample_rate if args.file else args.sample_rate or fe.sample_rate
        hops = streaming.stream_scores(
            _chunks(args, sample_rate=rate), scorer=sc, hop_frames=hop_frames,
            sample_rate=rate, smooth=args.smooth, keep_up=args.mic or args.realtime,
            name=args.file or ("microphone" if args.mic else "stdin"))
        window_s, hop_s = streaming.window_seconds(fe), hop_frames * fe.hop_size / fe.sample_rate
        header = (f"window {window_s:.3f} s ({fe.target_frames} frames), hop {hop_s:.3f} s "
                  f"({hop_frames} frames): a change is reported within window + hop = "
                  f"{window_s + hop_s:.3f} s" + (f"; resampling {rate} Hz to the checkpoint's "
                                                 f"{fe.sample_rate} Hz"
                                                 if rate != fe.sample_rate else ""))
        warned = False
        for k, hop in enumerate(hops):
            if k == 0:  # with the first hop: an input error before it stays one error line
                print(header, file=sys.stderr, flush=True)
            if hop.skipped and not warned:  # once: the hops are slower than real time
                print(f"warning: scoring a hop takes longer than the {hop_s:.3f} s it covers; "
                      "skipping hops to keep up with the stream (a longer --hop_s, --tome_r "
                      "or a smaller model keeps every hop)", file=sys.stderr, flush=True)
                warned = True
            print(_line(hop, labels=bundle.labels, top_k=args.top_k, jsonl=args.jsonl),
                  flush=True)
            yield hop.end


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0; 130 after Ctrl-C; 2 usage / input)."""
    args = _arguments().parse_args(argv)
    if args.list_devices:
        with cli.user_errors(debug=args.debug):
            print(streaming.list_devices())
        return 0
    heard = 0.0
    try:
        for heard in _stream(args):
            pass
    except KeyboardInterrupt:  # the stream's generators close, and the microphone with them
        print(f"\nstopped by Ctrl-C after {heard:.3f} s of stream", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head -3`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
