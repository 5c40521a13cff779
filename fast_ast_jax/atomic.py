"""Files that appear whole or not at all: write to a temporary name, then rename.

    with atomic.replacing(path) as tmp:
        np.savez(tmp, **arrays)   # path now holds the new file; a failure leaves it as it was

A reader (another stage, a resumed run, another host sharing the folder) never sees half a
file, and a killed writer leaves only its own temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` to write; renamed onto `path` when the block ends
    without error, deleted when it raises. The name holds this process's id (hosts sharing
    a directory may write the same file at once) and keeps `path`'s suffix (np.savez adds
    ".npz" to a name without it; soundfile picks the format by it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
