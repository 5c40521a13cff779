#!/usr/bin/env bash
# Every entry point once, in the runtime-only environment the README's first command made
# (.venv without the dev extra), on the demo checkpoint that command trained
# (workdirs/demo). A module-level import missing from [project].dependencies fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "the demo learned: README says eval accuracy ~0.97 (CI accepts >= 0.9)"
$py - <<'PY'
import json
rows = [json.loads(line) for line in open("workdirs/demo/metrics.jsonl")]
accuracy = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r][-1]
print(f"demo eval accuracy {accuracy:.4f}")
assert accuracy >= 0.9, f"the demo reached only {accuracy:.4f}"
PY

step "generated audio: two good files (1 s at 16 kHz mono, 3 s at 44.1 kHz stereo), one corrupt"
mkdir -p "$work/audio"
$py - "$work/audio" <<'PY'
import sys, numpy as np, soundfile as sf
out = sys.argv[1]
t = np.arange(16000) / 16000
sf.write(f"{out}/tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
t = np.arange(3 * 44100) / 44100
chirp = 0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)
sf.write(f"{out}/chirp.flac", np.stack([chirp, 0.5 * chirp], 1), 44100)
open(f"{out}/broken.wav", "wb").write(b"RIFF not audio")
open(f"{out}/meta.csv", "w").write("filename,label\ntone.wav,tone\nchirp.flac,chirp\n")
PY

step "predict: two files score, the corrupt one is one error line, exit status 1"
set +e
$py -m fast_ast_jax.predict "$work/audio" --checkpoint workdirs/demo --top_k 2 \
    --out "$work/predictions.csv" 2> "$work/predict.err"
rc=$?
set -e
cat "$work/predict.err"
[ "$rc" -eq 1 ] && grep -q "1 of 3 files failed" "$work/predict.err"
[ "$(wc -l < "$work/predictions.csv")" -eq 4 ]

step "stream: a file played as a stream (a line per hop), stdin PCM at 44.1 kHz stereo, a truncated stream"
$py -m fast_ast_jax.stream --checkpoint workdirs/demo --file "$work/audio/chirp.flac" \
    --hop_frames 50 --top_k 2 > "$work/stream.out"
$py - "$work/stream.out" "$work/audio/chirp.flac" <<'PY'
import re, sys
from fast_ast_jax import checkpoints
from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.io import load_audio
lines = open(sys.argv[1]).read().splitlines()
fe = checkpoints.load("workdirs/demo").frontend
frames = num_frames(len(load_audio(sys.argv[2], sample_rate=fe.sample_rate)),
                    window_size=fe.window_size, hop_size=fe.hop_size)
print("\n".join(lines))
assert len(lines) == -(-frames // 50), (len(lines), frames)  # a hop per 50 frames + the end
assert all(re.fullmatch(r" *\d+\.\d{3} s  \S+ [01]\.\d{3}, \S+ [01]\.\d{3}", x) for x in lines)
PY
$py -c "import sys, soundfile as sf; sys.stdout.buffer.write(sf.read(sys.argv[1], dtype='int16')[0].tobytes())" \
    "$work/audio/chirp.flac" | $py -m fast_ast_jax.stream --checkpoint workdirs/demo - \
    --sample_rate 44100 --channels 2 --jsonl > "$work/stream.jsonl"
[ "$(wc -l < "$work/stream.jsonl")" -eq "$(wc -l < "$work/stream.out")" ]
set +e
printf 'odd' | $py -m fast_ast_jax.stream --checkpoint workdirs/demo - 2> "$work/stream.err"
rc=$?
set -e
cat "$work/stream.err"
[ "$rc" -eq 2 ] && [ "$(wc -l < "$work/stream.err")" -eq 1 ] \
    && grep -q "ended inside a sample frame" "$work/stream.err"

step "embed: clip embeddings of the two good files, the corrupt one is one error line, exit 1"
set +e
$py -m fast_ast_jax.embed "$work/audio" --checkpoint workdirs/demo --out "$work/emb.npz" \
    2> "$work/embed.err"
rc=$?
set -e
cat "$work/embed.err"
[ "$rc" -eq 1 ] && grep -q "1 of 3 files failed" "$work/embed.err"
$py -c "import numpy as np, sys; assert np.load(sys.argv[1])['embeddings'].shape[0] == 2" \
    "$work/emb.npz"

step "embed --out .parquet --tokens: one row per file (the corrupt one with its error), one per window"
set +e
$py -m fast_ast_jax.embed "$work/audio" --checkpoint workdirs/demo --out "$work/emb.parquet" \
    --tokens 2> "$work/embed_parquet.err"
rc=$?
set -e
[ "$rc" -eq 1 ] && grep -q "1 of 3 files failed" "$work/embed_parquet.err" \
    || { cat "$work/embed_parquet.err"; exit 1; }
$py - "$work/emb.parquet" "$work/emb.tokens.parquet" <<'PY'
import sys, pyarrow.parquet as pq
clips, windows = (pq.read_table(p) for p in sys.argv[1:])
assert clips.num_rows == 3 and clips["embedding"].null_count == 1, clips
assert clips["error"].null_count == 2 and windows.num_rows >= 2, windows
print("parquet:", clips.num_rows, "files,", windows.num_rows, "windows of tokens",
      windows.schema.field("tokens").type)
PY

step "evaluate.py: one ToMe setting"
$py evaluate.py --checkpoint workdirs/demo --tome_r 4

step "export: waveform -> logits as one serialised function"
$py -m fast_ast_jax.export --checkpoint workdirs/demo --out "$work/demo.jaxexport"
$py - "$work/demo.jaxexport" <<'PY'
import json, sys, jax, numpy as np
path = sys.argv[1]
spec = json.load(open(path + ".json"))
fn = jax.export.deserialize(bytearray(open(path, "rb").read()))
logits = fn.call(np.zeros((2, spec["samples"]), np.float32),
                 np.full(2, spec["samples"], np.int32))
assert logits.shape == (2, len(spec["labels"])) and np.isfinite(logits).all(), logits
print("exported function:", logits.shape)
PY

step "distill dump + inspect"
$py -m fast_ast_jax.distill dump --checkpoint workdirs/demo --split eval \
    --out "$work/teacher.npz"
$py -m fast_ast_jax.distill inspect "$work/teacher.npz"

step "data.resample: convert a folder dataset once to 16 kHz mono FLAC"
$py -m fast_ast_jax.data.resample --csv "$work/audio/meta.csv" --out "$work/audio16k"
[ -f "$work/audio16k/meta.csv" ]

step "train.py: a few steps of a packed (ElasticAST) run"
$py train.py --config configs/test_elastic.py --workdir "$work/elastic" \
    --config.num_steps=2 --config.eval_every=0

step "train.py: masked pretraining, then fine-tuning from its encoder"
$py train.py --config configs/test_pretrain.py --workdir "$work/pretrain"
$py train.py --config configs/test.py --workdir "$work/finetune" \
    --config.init_from="$work/pretrain"

step "recipe: pretrain -> fine-tune -> ToMe student -> export on generated clips (tiny sizes), twice"
mkdir -p "$work/clips"
$py - "$work/clips" <<'PY'
import sys, numpy as np, soundfile as sf
out = sys.argv[1]
rows = ["filename,label,fold"]
for i in range(24):
    label = "low mid high".split()[i % 3]
    t = np.arange(int(8000 * (0.3 + 0.01 * i))) / 8000
    sf.write(f"{out}/{i}.wav", 0.4 * np.sin(2 * np.pi * (300 + 300 * (i % 3)) * t), 8000)
    rows.append(f"{i}.wav,{label},{'test' if i % 4 == 0 else 'train'}")
open(f"{out}/meta.csv", "w").write("\n".join(rows) + "\n")
PY
recipe=(-m fast_ast_jax.recipe --data "$work/clips/meta.csv" --eval fold=test
        --workdir "$work/recipe" --export --set batch_size=4 --set num_steps=2
        --set model.width=32 --set model.num_heads=2 --set model.mlp_dim=64
        --set model.depth=2 --set frontend.num_mel_bins=32 --set student.model.tome_r=1
        --set pretrain.model.decoder_width=16 --set pretrain.model.decoder_heads=2)
$py "${recipe[@]}"
[ -f "$work/recipe/results.md" ] && [ -f "$work/recipe/export/model.jaxexport" ]
$py "${recipe[@]}" > "$work/recipe_again.out"
[ "$(grep -c 'skipped' "$work/recipe_again.out")" -eq 4 ]

step "train.py: an impossible config value is one error line and exit status 2"
set +e
$py train.py --config configs/test.py --workdir "$work/bad" --config.batch_size=-3 \
    2> "$work/bad.err"
rc=$?
set -e
cat "$work/bad.err"
[ "$rc" -eq 2 ] && [ "$(wc -l < "$work/bad.err")" -eq 1 ] && [ ! -e "$work/bad" ]

printf '\nentry points: all ran in the runtime-only environment\n'
