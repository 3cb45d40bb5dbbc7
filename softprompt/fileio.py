"""Files written completely or not at all: a reader never sees half a file, even after a kill."""

from __future__ import annotations

import os
import random
from pathlib import Path


def write_temp(path: Path, data: bytes) -> Path:
    """Writes `data` durably to a unique temp file beside `path` (for a rename or link onto it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a failed or interrupted write leaves no temp file behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | Path, data: bytes) -> None:
    """Writes a file completely or not at all.

    The data goes to a unique temp file in the same folder, which is then renamed onto `path`."""
    tmp = write_temp(Path(path), data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
