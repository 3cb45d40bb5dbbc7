"""Files written completely or not at all: a reader never sees half a file, even after a kill.

A writer writes a temp file beside the target, then renames (or links) it onto the target. A
writer killed in between leaves that temp file behind, hidden (its name starts with "."),
matching TEMP_NAME. While its writer lives a temp file is locked (flock), so a cleaner removes
only abandoned ones (`remove_abandoned_temp`, used by `softprompt registry gc`); a writer whose
temp file was removed anyway, in the instant between creating and locking it, writes it again.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
from pathlib import Path
from typing import NamedTuple

# The name write_temp gives: ".<target name>.<pid>.<8 hex digits>.tmp".
TEMP_NAME = re.compile(r"\..+\.[0-9]+\.[0-9a-f]{8}\.tmp")
_ATTEMPTS = 5  # temp files a writer writes before giving up, when a cleaner keeps removing them


class LockedTemp(NamedTuple):
    """A temp file whose writer still holds it, with the open, flock-ed descriptor."""

    path: Path
    fd: int


def _write_locked_temp(path: Path, data: bytes) -> LockedTemp:
    """Writes `data` durably to a unique temp file beside `path`, locked until the caller closes
    the descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a failed or interrupted write leaves no temp file behind
        tmp.unlink(missing_ok=True)
        os.close(fd)
        raise
    return LockedTemp(tmp, fd)


def write_temp(path: Path, data: bytes) -> Path:
    """Writes `data` durably to a unique temp file beside `path` (for a rename or link onto it)."""
    tmp, fd = _write_locked_temp(path, data)
    os.close(fd)
    return tmp


def publish_temp(path: Path, data: bytes, move) -> None:
    """Writes `data` to a locked temp file beside `path`, then calls `move(tmp, path)` (a rename
    or a link). When the temp file vanished before the move, writes it again."""
    for attempt in range(_ATTEMPTS):
        tmp, fd = _write_locked_temp(path, data)
        try:
            move(tmp, path)
            return
        except FileNotFoundError:
            if tmp.exists() or attempt == _ATTEMPTS - 1:
                raise
        finally:
            tmp.unlink(missing_ok=True)  # before the lock goes, so no cleaner sees it unlocked
            os.close(fd)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Writes a file completely or not at all.

    The data goes to a unique temp file in the same folder, which is then renamed onto `path`."""
    publish_temp(Path(path), data, os.replace)


def remove_abandoned_temp(tmp: Path) -> bool:
    """Removes the temp file `tmp` unless a live writer holds its lock; True when removed."""
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        tmp.unlink(missing_ok=True)  # under the lock, so no writer is using it
    finally:
        os.close(fd)
    return True
