"""Folder + CSV source: `filename,label[,<other columns>]` next to a directory of audio files.

Multi-label rows separate labels with ';' (`dog;bark`). Rows are selected by column values
(e.g. FSDD's meta.csv: `fold=train` or `official_split=test`). Label names come from the
config or, by default, from every row of the CSV (not only the selected ones), so the
train and eval splits of one CSV always agree on the label order.

Filenames must be relative paths inside `audio_dir` (checked lexically, so symlinked files
are fine): an absolute path or one that climbs out with `..` is an error, as is a filename
listed twice among the selected rows (it would be trained on twice as often).

Unlabeled audio (for masked pretraining, models.mae): a CSV read with `label_column=""`
(it may have no label column), or no CSV at all - every audio file under `audio_dir`. Such a
source has no label names and every example's label is an empty (0,) vector, so the
batching pipeline's targets are (B, 0) arrays that a pretraining step ignores.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fast_ast_jax.audio.io import AUDIO_EXTENSIONS, audio_files, load_audio


def _sorted_labels(names: set[str]) -> list[str]:
    """Numeric names sort as numbers ("2" < "10"), others alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class FolderSource:
    """Random-access source over a CSV of audio files, or over a folder of audio.

    Example i -> {"id": filename, "audio": (n,) float32 mono at `sample_rate`,
    "label": int (single-label), (num_labels,) float32 multi-hot, or (0,) float32 when
    the source is unlabeled}.

    Args:
        csv_path: the CSV; its header must name `filename_column` (and `label_column`).
            Empty: no CSV; every audio file under `audio_dir`, unlabeled, is an example.
        audio_dir: directory the filenames are relative to (default: the CSV's directory).
        select: {column: value or list of values} rows to keep, e.g. {"fold": "train"}.
        labels: label names in logit order (default: sorted names found in the CSV).
        multi_label: labels are ';'-separated sets (multi-hot targets).
        sample_rate: audio is decoded, downmixed and resampled to this rate.
        label_column: the labels' column; empty for unlabeled audio (pretraining).
    """

    def __init__(self, *, csv_path: str | os.PathLike | None = None,
                 audio_dir: str | os.PathLike | None = None,
                 select: dict | None = None, labels: list[str] | None = None,
                 multi_label: bool = False, sample_rate: int = 16000,
                 filename_column: str = "filename", label_column: str = "label"):
        self.sample_rate = sample_rate
        self.multi_label = multi_label and bool(csv_path and label_column)
        if (not csv_path or not label_column) and labels:
            raise ValueError(f"labels {list(labels)} given for unlabeled audio (no csv_path "
                             "or label_column); drop config.data.*.labels")
        if not csv_path:
            if select:
                raise ValueError(f"select {select} needs a CSV; set config.data.*.csv_path "
                                 "or drop config.data.*.select")
            self.labels: list[str] = []
            self._items = self._folder_items(audio_dir)
        else:
            self._items = self._csv_items(
                Path(csv_path), audio_dir=audio_dir, select=dict(select or {}),
                labels=labels, filename_column=filename_column, label_column=label_column)

    def _folder_items(self, audio_dir) -> list[tuple[str, list[int]]]:
        """Every audio file under `audio_dir`, unlabeled (sets self.audio_dir)."""
        if not audio_dir or not Path(audio_dir).is_dir():
            raise FileNotFoundError(f"audio folder {audio_dir!r} does not exist; set "
                                    "config.data.*.audio_dir to a folder of audio files "
                                    "(or config.data.*.csv_path to a CSV of them)")
        self.audio_dir = Path(audio_dir)
        files = audio_files(self.audio_dir)
        if not files:
            raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under "
                             f"{self.audio_dir}; set config.data.*.audio_dir to a folder "
                             "of audio")
        return [(str(f.relative_to(self.audio_dir)), []) for f in files]

    def _csv_items(self, csv_path: Path, *, audio_dir, select: dict, labels,
                   filename_column: str, label_column: str) -> list[tuple[str, list[int]]]:
        """The selected rows as (filename, label ids); sets self.audio_dir, self.labels."""
        multi_label = self.multi_label
        if not csv_path.is_file():
            raise FileNotFoundError(f"label CSV {csv_path} does not exist; set "
                                    "config.data.csv_path to a file with columns "
                                    f"{filename_column},{label_column}[,...]")
        self.audio_dir = Path(audio_dir) if audio_dir else csv_path.parent
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
        for col in [filename_column, *select]:
            if col not in columns:
                raise ValueError(f"{csv_path}: no column {col!r}; the header has {columns}")
        if label_column and label_column not in columns:
            raise ValueError(f"{csv_path}: no column {label_column!r}; the header has "
                             f"{columns} (for unlabeled audio set "
                             "config.data.*.label_column='')")

        def split_labels(row: dict, line: int) -> list[str]:
            if not label_column:
                return []
            names = [n.strip() for n in row[label_column].split(";") if n.strip()]
            if not names:
                raise ValueError(f"{csv_path} line {line}: empty {label_column!r}")
            if len(names) > 1 and not multi_label:
                raise ValueError(f"{csv_path} line {line}: several labels {names} in a "
                                 "single-label source; set config.data.multi_label=True")
            return names

        all_names = {n for i, r in enumerate(rows) for n in split_labels(r, i + 2)}
        self.labels = list(labels) if labels else _sorted_labels(all_names)
        index = {name: i for i, name in enumerate(self.labels)}
        wanted = {c: {str(v) for v in (vals if isinstance(vals, (list, tuple)) else [vals])}
                  for c, vals in select.items()}
        items: list[tuple[str, list[int]]] = []
        first_line: dict[str, int] = {}
        root = os.path.normpath(self.audio_dir)
        for i, row in enumerate(rows):
            if not all(row[c] in vals for c, vals in wanted.items()):
                continue
            name = row[filename_column]
            inside = os.path.normpath(os.path.join(root, name))
            if os.path.isabs(name) or os.path.commonpath([root, inside]) != root:
                raise ValueError(f"{csv_path} line {i + 2}: {filename_column} {name!r} is "
                                 f"not inside the audio directory {self.audio_dir}; give "
                                 "paths relative to it (or set config.data.*.audio_dir)")
            if name in first_line:
                raise ValueError(f"{csv_path} line {i + 2}: {name!r} is listed again (first "
                                 f"on line {first_line[name]}); remove the duplicate row")
            first_line[name] = i + 2
            names = split_labels(row, i + 2)
            unknown = [n for n in names if n not in index]
            if unknown:
                raise ValueError(f"{csv_path} line {i + 2}: unknown label(s) {unknown}; "
                                 f"known labels: {self.labels}")
            items.append((row[filename_column], [index[n] for n in names]))
        if not items:
            raise ValueError(f"{csv_path}: no rows match {select}")
        missing = [f for f, _ in items if not (self.audio_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} audio file(s) listed in {csv_path} are "
                                    f"missing under {self.audio_dir}, e.g. {missing[:3]}")
        return items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        """Clip ids (the filenames) in example order, without decoding audio."""
        return [filename for filename, _ in self._items]

    def __getitem__(self, index: int) -> dict:
        filename, label_ids = self._items[index]
        audio = load_audio(self.audio_dir / filename, sample_rate=self.sample_rate)
        if not self.labels:  # unlabeled: no classes, an empty target
            label = np.zeros(0, np.float32)
        elif self.multi_label:
            label = np.zeros(len(self.labels), np.float32)
            label[label_ids] = 1.0
        else:
            label = label_ids[0]
        return {"id": filename, "audio": audio, "label": label}
