"""Convert a folder dataset once to mono FLAC at the model's rate (16 kHz by default).

    python -m fast_ast_jax.data.resample --csv DATA/meta.csv --out DATA_16k [--workers 2]

Every epoch the loader decodes each clip and, when the file's rate differs from the
front-end's, resamples it (soxr HQ). For 44.1 kHz files that is most of the host's work per
clip once the front-end runs on the accelerator (config.frontend.on_device; docs/RESULTS.md,
"Input pipeline"): decoding 2.8x more samples, then resampling them, every epoch. AST's own
recipes store AudioSet at 16 kHz for this reason. This tool does the decode + downmix +
resample once, with the loader's own code (`audio.io.load_audio`, so a converted clip is
what the loader would have computed, up to the output's PCM quantisation), and writes:

- OUT/<filename with .flac>: mono FLAC at --sample_rate (16-bit PCM by default), the same
  relative paths as the CSV's;
- OUT/<csv name>: the CSV with every column kept and the filename column pointing at the
  FLAC files, without the rows of bad clips;
- OUT/bad_clips.csv (only when there are any): filename,reason of each clip left out.

Then point config.data.*.csv_path at OUT/<csv name>. A clip that cannot be decoded (missing,
empty, corrupt, non-finite) is skipped and listed (--on_bad_clip skip, the default) or stops
the conversion naming the file (fail). Files are written under a temporary name and
renamed, so an interrupted conversion resumes where it stopped (existing outputs are kept;
--overwrite redoes them). Samples outside [-1, 1] (resampling can overshoot a full-scale
clip) are clipped, and the number of clipped files is reported.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from fast_ast_jax import atomic
from fast_ast_jax.audio.io import AudioError, load_audio

SUBTYPES = ("PCM_16", "PCM_24")


def output_name(filename: str) -> str:
    """The converted file's relative path: `filename` with a .flac suffix."""
    return str(Path(filename).with_suffix(".flac"))


def convert_clip(task: tuple[str, str, int, str, bool]) -> tuple[str, str | None, bool]:
    """Decode `src`, downmix and resample to `rate`, write mono FLAC `dst`.

    task: (src, dst, rate, subtype, overwrite). Returns (src, error message or None,
    whether samples were clipped to [-1, 1]). An existing dst is kept unless overwrite.
    """
    src, dst, rate, subtype, overwrite = task
    if not overwrite and os.path.exists(dst):
        return src, None, False
    try:
        wave = load_audio(src, sample_rate=rate)
    except AudioError as e:
        return src, str(e), False
    clipped = bool(np.abs(wave).max() > 1.0)
    with atomic.replacing(dst) as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), rate, format="FLAC", subtype=subtype)
    return src, None, clipped


def convert_folder(*, csv_path: str | os.PathLike, out_dir: str | os.PathLike,
                   audio_dir: str | os.PathLike | None = None, sample_rate: int = 16000,
                   filename_column: str = "filename", subtype: str = "PCM_16",
                   workers: int = 0, on_bad_clip: str = "skip",
                   overwrite: bool = False) -> dict:
    """Convert every file of a folder dataset's CSV (see the module docstring).

    Args:
        csv_path: the dataset's CSV (the FolderSource format: a filename column and others).
        out_dir: where the FLAC files and the new CSV go (must not be the audio directory).
        audio_dir: directory the filenames are relative to (default: the CSV's directory).
        sample_rate: output rate (Hz), the front-end's.
        filename_column: the CSV's column of relative audio paths.
        subtype: FLAC sample format, PCM_16 or PCM_24.
        workers: worker processes (0 = in this process).
        on_bad_clip: "skip" (leave the row out, list it in bad_clips.csv) or "fail".
        overwrite: redo files that already exist in out_dir.
    Returns:
        {"csv": path of the new CSV, "converted": rows written, "bad": {filename: reason},
         "clipped": number of files with samples clipped to [-1, 1]}.
    Raises:
        AudioError: a bad clip under on_bad_clip="fail" (naming the file).
        ValueError: bad arguments, a missing column, or two files that map to one output.
    """
    csv_path = Path(csv_path)
    audio_dir = Path(audio_dir) if audio_dir else csv_path.parent
    out_dir = Path(out_dir)
    if on_bad_clip not in ("skip", "fail"):
        raise ValueError(f"on_bad_clip={on_bad_clip!r}: use 'skip' or 'fail'")
    if subtype not in SUBTYPES:
        raise ValueError(f"subtype={subtype!r}: use one of {SUBTYPES}")
    if sample_rate <= 0 or workers < 0:
        raise ValueError(f"need sample_rate > 0 and workers >= 0, got {sample_rate}, "
                         f"{workers}")
    if not csv_path.is_file():
        raise ValueError(f"{csv_path}: no such CSV file")
    if out_dir.resolve() == audio_dir.resolve():
        raise ValueError(f"--out {out_dir} is the audio directory; choose a new directory "
                         "(the originals are kept)")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if filename_column not in columns:
        raise ValueError(f"{csv_path}: no column {filename_column!r}; the header has "
                         f"{columns} (set --filename_column)")
    seen: dict[str, str] = {}
    for row in rows:
        name = row[filename_column]
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise ValueError(f"{csv_path}: {filename_column} {name!r} is not a relative path "
                             f"inside {audio_dir}")
        target = output_name(name)
        if seen.setdefault(target, name) != name:
            raise ValueError(f"{csv_path}: {seen[target]!r} and {name!r} would both become "
                             f"{target!r}; rename one of them")
    tasks = [(str(audio_dir / r[filename_column]),
              str(out_dir / output_name(r[filename_column])), sample_rate, subtype, overwrite)
             for r in rows]
    bad: dict[str, str] = {}
    clipped = 0
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers else None
    try:
        results = pool.imap(convert_clip, tasks, chunksize=4) if pool else map(convert_clip,
                                                                                 tasks)
        for (src, error, was_clipped), row in tqdm(zip(results, rows), total=len(rows),
                                                   desc=f"to {sample_rate} Hz FLAC",
                                                   unit="clip"):
            if error is not None:
                if on_bad_clip == "fail":
                    raise AudioError(f"{error} [--on_bad_clip skip leaves bad clips out]")
                bad[row[filename_column]] = error
            clipped += was_clipped
    finally:
        if pool is not None:
            pool.terminate()
    kept = [r for r in rows if r[filename_column] not in bad]
    out_dir.mkdir(parents=True, exist_ok=True)
    out_csv = out_dir / csv_path.name
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({**r, filename_column: output_name(r[filename_column])} for r in kept)
    bad_csv = out_dir / "bad_clips.csv"
    if bad:
        with open(bad_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([filename_column, "reason"])
            writer.writerows(sorted(bad.items()))
    elif bad_csv.exists():
        bad_csv.unlink()  # from an earlier run whose bad clips have since been fixed
    return {"csv": str(out_csv), "converted": len(kept), "bad": bad, "clipped": clipped}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fast_ast_jax.data.resample",
                                description=__doc__.split("\n")[0])
    p.add_argument("--csv", required=True, help="the dataset's CSV (filename,label,...)")
    p.add_argument("--out", required=True, help="output directory (FLAC files + new CSV)")
    p.add_argument("--audio_dir", default=None,
                   help="directory the filenames are relative to (default: the CSV's)")
    p.add_argument("--sample_rate", type=int, default=16000, help="output rate in Hz")
    p.add_argument("--filename_column", default="filename")
    p.add_argument("--subtype", default="PCM_16", choices=SUBTYPES)
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (0 = in this process)")
    p.add_argument("--on_bad_clip", default="skip", choices=("skip", "fail"))
    p.add_argument("--overwrite", action="store_true",
                   help="redo outputs that already exist (default: resume, keep them)")
    args = p.parse_args(argv)
    try:
        result = convert_folder(csv_path=args.csv, out_dir=args.out, audio_dir=args.audio_dir,
                                sample_rate=args.sample_rate,
                                filename_column=args.filename_column, subtype=args.subtype,
                                workers=args.workers, on_bad_clip=args.on_bad_clip,
                                overwrite=args.overwrite)
    except (ValueError, AudioError) as e:  # AudioError is a ValueError; named for clarity
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {result['converted']} clips and {result['csv']}")
    if result["bad"]:
        print(f"skipped {len(result['bad'])} bad clip(s), listed in "
              f"{Path(result['csv']).parent / 'bad_clips.csv'}, e.g. "
              f"{next(iter(result['bad'].values()))}")
    if result["clipped"]:
        print(f"{result['clipped']} clip(s) had samples outside [-1, 1] after resampling; "
              "they were clipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
