"""The recipe's clips: the user's CSV read and checked, the eval split chosen, unlabeled
folders listed, clip durations measured; then written into the workdir as the two CSVs
every stage reads.

Nothing here writes until `write_clips`: every check on the user's input runs first, so a
bad input (one `error:` line) leaves the workdir as it was.

Workdir layout written by `write_clips` (W/data):
    labeled/      -> the user's audio folder (a symbolic link)
    unlabeled<i>/ -> the i-th --unlabeled folder (a symbolic link)
    labeled.csv   filename,label,split: every labeled clip, split "train" or "eval"
    pretrain.csv  filename: the training clips and the unlabeled ones (never an eval clip)
Filenames are relative to W/data, so one folder source reads both CSVs, and a clip's id
(its filename) is the same in every stage and in the teacher-logits file.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from fast_ast_jax import atomic
from fast_ast_jax.audio.fbank import num_frames
from fast_ast_jax.audio.frontend import FrontEnd
from fast_ast_jax.audio.io import AudioError, audio_files, load_audio

# The seed of the held-out split: fixed, so that runs with different --seed values share
# one split (their accuracies then differ by the training's randomness only).
HOLDOUT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Clips:
    """The recipe's clips, filenames relative to the workdir's data folder.

    labeled: (filename, label, "train" | "eval") per labeled clip, in CSV order.
    unlabeled: filenames of the extra pretraining clips (`--unlabeled`).
    links: data-folder name -> the folder it points to ("labeled", "unlabeled1", ...).
    split: how the eval clips were chosen ("fold=test", or "holdout 0.2 (seed 0)").
    """

    labeled: tuple[tuple[str, str, str], ...]
    unlabeled: tuple[str, ...]
    links: dict[str, str]
    split: str

    def names(self, split: str) -> list[str]:
        return [f for f, _, s in self.labeled if s == split]

    @property
    def labels(self) -> list[str]:
        return sorted({label for _, label, s in self.labeled if s == "train"})

    @property
    def pretrain(self) -> list[str]:
        """The pretraining audio: training clips, then the unlabeled ones."""
        return self.names("train") + list(self.unlabeled)

    def summary(self) -> dict:
        """What identifies the data of a run (recorded in W/recipe.json)."""
        text = "\n".join([*map(",".join, self.labeled), *self.unlabeled, *(
            f"{k}={v}" for k, v in sorted(self.links.items()))])
        return {"links": dict(self.links), "split": self.split,
                "train": len(self.names("train")), "eval": len(self.names("eval")),
                "unlabeled": len(self.unlabeled), "labels": self.labels,
                "clips_sha1": hashlib.sha1(text.encode()).hexdigest()}


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file; give a CSV with columns "
                                "filename,label[,...]")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--data {path}: cannot read it ({e}); give a readable UTF-8 CSV "
                         "with columns filename,label[,...]") from e


def _holdout(labels: list[str], *, fraction: float) -> list[bool]:
    """Stratified held-out choice: round(fraction * n) clips of each label (n >= 2; at
    least one, never all), drawn with HOLDOUT_SEED. Returns is-eval per row."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    chosen = [False] * len(labels)
    rows_of = collections.defaultdict(list)
    for i, label in enumerate(labels):
        rows_of[label].append(i)
    for label in sorted(rows_of):
        rows = rows_of[label]
        k = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        for i in rng.permutation(rows)[:k]:
            chosen[int(i)] = True
    return chosen


def read_clips(csv_path: str | os.PathLike, *, audio_dir: str | os.PathLike | None = None,
               eval_select: str | None = None, holdout: float = 0.2,
               unlabeled: tuple[str | os.PathLike, ...] = ()) -> Clips:
    """Read and check the user's data; nothing is written.

    Args:
        csv_path: CSV with columns filename,label (other columns may select the eval split).
        audio_dir: folder the filenames are relative to (default: the CSV's folder).
        eval_select: "COLUMN=VALUE": rows with that value are the eval split, all others
            train; None: a stratified held-out `holdout` fraction of each label.
        unlabeled: folders of extra audio for pretraining only; files that are labeled
            clips (the same file) are left out, so no eval clip is pretrained on.
    Raises:
        FileNotFoundError / ValueError: one-line messages naming the input and the fix.
    """
    csv_path = Path(csv_path).absolute()
    columns, rows = _read_csv(csv_path)
    audio_dir = Path(audio_dir).absolute() if audio_dir else csv_path.parent
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"--audio_dir {audio_dir}: no such folder; give the folder "
                                f"the filenames of {csv_path.name} are relative to")
    for column in ("filename", "label"):
        if column not in columns:
            raise ValueError(f"--data {csv_path}: no column {column!r}; the header has "
                             f"{columns} (the recipe reads filename,label[,...])")
    if not rows:
        raise ValueError(f"--data {csv_path}: no rows; list one clip per line")
    for line, row in enumerate(rows, start=2):
        name, label = row["filename"] or "", (row["label"] or "").strip()
        if not label:
            raise ValueError(f"--data {csv_path} line {line}: empty label; give every clip "
                             "a label (unlabeled audio goes in a --unlabeled folder)")
        if ";" in label:
            raise ValueError(f"--data {csv_path} line {line}: several labels {label!r}; the "
                             "recipe trains single-label classifiers")
        inside = os.path.normpath(os.path.join(audio_dir, name))
        if not name or os.path.isabs(name) or os.path.commonpath([audio_dir, inside]) != str(
                audio_dir):
            raise ValueError(f"--data {csv_path} line {line}: filename {name!r} is not a path "
                             f"inside --audio_dir {audio_dir}; give paths relative to it")
    names = [r["filename"] for r in rows]
    repeated = [n for n, c in collections.Counter(names).items() if c > 1]
    if repeated:
        raise ValueError(f"--data {csv_path}: {len(repeated)} filename(s) listed twice, e.g. "
                         f"{repeated[0]!r}; remove the duplicate rows")
    missing = [n for n in names if not (audio_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--data {csv_path}: {len(missing)} of {len(names)} audio "
                                f"files are missing under {audio_dir}, e.g. {missing[:3]}; "
                                "fix the filenames or --audio_dir")
    labels = [r["label"].strip() for r in rows]
    if eval_select is not None:
        column, sep, value = eval_select.partition("=")
        if not sep or not column:
            raise ValueError(f"--eval {eval_select!r}: give COLUMN=VALUE, e.g. fold=test")
        if column not in columns:
            raise ValueError(f"--eval {eval_select}: {csv_path.name} has no column "
                             f"{column!r}; the header has {columns}")
        is_eval = [r[column] == value for r in rows]
        if not any(is_eval):
            values = sorted({r[column] for r in rows})
            raise ValueError(f"--eval {eval_select}: selects no row of {csv_path.name}; "
                             f"column {column!r} holds {values[:10]}")
        if all(is_eval):
            raise ValueError(f"--eval {eval_select}: selects every row of {csv_path.name}, "
                             "leaving no training clip; choose the value of the test rows")
        split = eval_select
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"--holdout {holdout}: give a fraction in (0, 1), e.g. 0.2")
        is_eval = _holdout(labels, fraction=holdout)
        if not any(is_eval):
            raise ValueError(f"--holdout {holdout}: no label has 2 clips, so no clip can be "
                             f"held out of {csv_path.name}; add clips or use --eval")
        split = f"holdout {holdout:g} (seed {HOLDOUT_SEED})"
    train_labels = {label for label, e in zip(labels, is_eval) if not e}
    if len(train_labels) < 2:
        raise ValueError(f"--data {csv_path}: the training clips have "
                         f"{len(train_labels)} label(s) {sorted(train_labels)}; a classifier "
                         "needs at least 2 classes")
    unseen = sorted({label for label, e in zip(labels, is_eval) if e} - train_labels)
    if unseen:
        raise ValueError(f"--eval {split}: label(s) {unseen} occur only in the eval split; "
                         "every label needs training clips")
    labeled = tuple((f"labeled/{n}", label, "eval" if e else "train")
                    for n, label, e in zip(names, labels, is_eval))
    links = {"labeled": str(audio_dir)}
    known = {os.path.realpath(audio_dir / n) for n in names}
    extra: list[str] = []
    for i, folder in enumerate(unlabeled, start=1):
        folder = Path(folder).absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f"--unlabeled {folder}: no such folder; give folders of "
                                    "audio files")
        files = [f for f in audio_files(folder) if os.path.realpath(f) not in known]
        if not files:
            raise ValueError(f"--unlabeled {folder}: no audio files (other than the labeled "
                             "clips) under it")
        links[f"unlabeled{i}"] = str(folder)
        extra += [f"unlabeled{i}/{f.relative_to(folder)}" for f in files]
    return Clips(labeled=labeled, unlabeled=tuple(extra), links=links, split=split)


def clip_frames(clips: Clips, *, frontend: FrontEnd) -> np.ndarray:
    """Fbank frames of every training clip at `frontend`'s rate and hop, from the files'
    headers (decoded only where soundfile cannot read the header; unreadable clips are
    left out: training skips them)."""
    out = []
    for name in clips.names("train"):
        path = Path(clips.links["labeled"]) / name.split("/", 1)[1]
        try:
            samples = sf.info(str(path)).duration * frontend.sample_rate
        except Exception:  # noqa: BLE001 - a format libsndfile cannot parse: decode it
            try:
                samples = len(load_audio(path, sample_rate=frontend.sample_rate))
            except AudioError:
                continue
        out.append(num_frames(int(samples), window_size=frontend.window_size,
                              hop_size=frontend.hop_size))
    return np.asarray(out, np.int64)


def target_frames(frames: np.ndarray, *, quantile: float = 0.99, multiple: int = 16,
                  cap: int = 1024) -> int:
    """The model's input length: the `quantile` of the clips' frame counts, rounded up to
    whole `multiple`s (16: whole 16x16 patches at stride 16), between one `multiple` and
    `cap` (AST's 10 s). Longer clips are cut at the end, shorter ones padded."""
    if not len(frames):
        raise ValueError("no training clip could be read, so the input length cannot be "
                         "chosen; check the audio files")
    q = float(np.quantile(frames, quantile))
    return int(min(max(math.ceil(q / multiple) * multiple, multiple), cap))


def write_clips(clips: Clips, data_dir: Path) -> None:
    """The data folder (module docstring): links, labeled.csv, pretrain.csv; rewritten on
    every run (the same content for the same inputs)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, target in clips.links.items():
        link = data_dir / name
        if link.is_symlink() and os.readlink(link) != target:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    _write_rows(data_dir / "labeled.csv", ("filename", "label", "split"), clips.labeled)
    _write_rows(data_dir / "pretrain.csv", ("filename",), [(f,) for f in clips.pretrain])


def _write_rows(path: Path, header: tuple[str, ...], rows) -> None:
    with atomic.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
