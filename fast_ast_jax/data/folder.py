"""Folder + CSV source: `filename,label[,<other columns>]` next to a directory of audio files.

Multi-label rows separate labels with ';' (`dog;bark`). Rows are selected by column values
(e.g. FSDD's meta.csv: `fold=train` or `official_split=test`). Label names come from the
config or, by default, from every row of the CSV (not only the selected ones), so the
train and eval splits of one CSV always agree on the label order.

Filenames must be relative paths inside `audio_dir` (checked lexically, so symlinked files
are fine): an absolute path or one that climbs out with `..` is an error, as is a filename
listed twice among the selected rows (it would be trained on twice as often).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fast_ast_jax.audio.io import load_audio


def _sorted_labels(names: set[str]) -> list[str]:
    """Numeric names sort as numbers ("2" < "10"), others alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


class FolderSource:
    """Random-access source over a CSV of audio files.

    Example i -> {"id": filename, "audio": (n,) float32 mono at `sample_rate`,
    "label": int (single-label) or (num_labels,) float32 multi-hot}.

    Args:
        csv_path: the CSV; its header must name `filename_column` and `label_column`.
        audio_dir: directory the filenames are relative to (default: the CSV's directory).
        select: {column: value or list of values} rows to keep, e.g. {"fold": "train"}.
        labels: label names in logit order (default: sorted names found in the CSV).
        multi_label: labels are ';'-separated sets (multi-hot targets).
        sample_rate: audio is decoded, downmixed and resampled to this rate.
    """

    def __init__(self, *, csv_path: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                 select: dict | None = None, labels: list[str] | None = None,
                 multi_label: bool = False, sample_rate: int = 16000,
                 filename_column: str = "filename", label_column: str = "label"):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"label CSV {csv_path} does not exist; set "
                                    "config.data.csv_path to a file with columns "
                                    f"{filename_column},{label_column}[,...]")
        self.audio_dir = Path(audio_dir) if audio_dir else csv_path.parent
        self.multi_label, self.sample_rate = multi_label, sample_rate
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
        select = dict(select or {})
        for col in [filename_column, label_column, *select]:
            if col not in columns:
                raise ValueError(f"{csv_path}: no column {col!r}; the header has {columns}")

        def split_labels(row: dict, line: int) -> list[str]:
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
        self._items: list[tuple[str, list[int]]] = []
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
            self._items.append((row[filename_column], [index[n] for n in names]))
        if not self._items:
            raise ValueError(f"{csv_path}: no rows match {select}")
        missing = [f for f, _ in self._items if not (self.audio_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} audio file(s) listed in {csv_path} are "
                                    f"missing under {self.audio_dir}, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        """Clip ids (the filenames) in example order, without decoding audio."""
        return [filename for filename, _ in self._items]

    def __getitem__(self, index: int) -> dict:
        filename, label_ids = self._items[index]
        audio = load_audio(self.audio_dir / filename, sample_rate=self.sample_rate)
        if self.multi_label:
            label = np.zeros(len(self.labels), np.float32)
            label[label_ids] = 1.0
        else:
            label = label_ids[0]
        return {"id": filename, "audio": audio, "label": label}
