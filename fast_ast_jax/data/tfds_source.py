"""TFDS source: any TFDS audio dataset by name / split / data_dir.

Datasets prepared as ArrayRecord are read with random access (`builder.as_data_source`),
without TensorFlow graphs. TFRecord datasets have no random access, so their split is read
once into memory (fine for small sets such as spoken_digit; prepare large ones as
ArrayRecord). `tensorflow_datasets` (and, through it, TensorFlow, ~8 s) is imported only
when a TfdsSource is built, never by `import fast_ast_jax`.
"""
from __future__ import annotations

import numpy as np

from fast_ast_jax.audio.io import prepare_waveform


class TfdsSource:
    """Random-access source over one TFDS split.

    Example i -> {"id": str, "audio": (n,) float32 mono at `sample_rate`, "label": int or
    (num_labels,) multi-hot}.

    Args:
        name: TFDS name, e.g. "spoken_digit".
        split: TFDS split, slices allowed ("train[:80%]").
        data_dir: where the prepared dataset lives (nothing is downloaded).
        audio_key, label_key: feature names; the label must be a ClassLabel or a Sequence
            of ClassLabel (multi-label).
        id_key: optional feature used as the example id (default: "<split>-<index>").
        sample_rate: audio is downmixed and resampled to this rate.
        bit_depth: PCM bit depth of integer audio (TFDS stores 16-bit samples as int64).
    """

    def __init__(self, *, name: str, split: str, data_dir: str | None = None,
                 audio_key: str = "audio", label_key: str = "label", id_key: str | None = None,
                 sample_rate: int = 16000, bit_depth: int = 16):
        import tensorflow_datasets as tfds  # lazy: pulls in TensorFlow

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # tfds raises several types for an unknown / absent set
            raise ValueError(f"cannot open TFDS dataset {name!r} in data_dir={data_dir!r}: "
                             f"{e}") from e
        features = builder.info.features
        for key in [audio_key, label_key] + ([id_key] if id_key else []):
            if key not in features:
                raise ValueError(f"TFDS {name!r} has no feature {key!r}; features: "
                                 f"{sorted(features.keys())}")
        label_feature = features[label_key]
        self.multi_label = isinstance(label_feature, tfds.features.Sequence)
        if self.multi_label:
            label_feature = label_feature.feature
        if not isinstance(label_feature, tfds.features.ClassLabel):
            raise ValueError(f"TFDS {name!r} feature {label_key!r} is not a ClassLabel")
        self.labels = list(label_feature.names)
        self.source_rate = int(getattr(features[audio_key], "sample_rate", None) or sample_rate)
        self.sample_rate, self.bit_depth, self.name = sample_rate, bit_depth, name
        self.split, self.id_key = split, id_key
        self.audio_key, self.label_key = audio_key, label_key
        if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
            self._data = builder.as_data_source(split=split)
        else:
            self._data = list(builder.as_dataset(split=split, shuffle_files=False)
                              .as_numpy_iterator())

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        ex = self._data[index]
        audio = prepare_waveform(ex[self.audio_key], sr=self.source_rate,
                                 sample_rate=self.sample_rate, bit_depth=self.bit_depth,
                                 name=f"TFDS {self.name} {self.split}[{index}]")
        if self.multi_label:
            label = np.zeros(len(self.labels), np.float32)
            label[np.asarray(ex[self.label_key], np.int64)] = 1.0
        else:
            label = int(ex[self.label_key])
        uid = ex[self.id_key] if self.id_key else f"{self.split}-{index}"
        uid = uid.decode() if isinstance(uid, bytes) else str(uid)
        return {"id": uid, "audio": audio, "label": label}
