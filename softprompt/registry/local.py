"""The local-directory backend (the embedded default): the same layout and guarantees as S3.

- create (a version's manifest): the bytes go to a unique temp file, then `os.link` publishes it
  under the final name; link fails if the name exists, so exactly one of several racing
  publishers wins, and a reader never sees a half-written file.
- replace (an alias): under an exclusive `flock` on a lock file beside it, the current bytes are
  compared with the expected etag (their sha256), then the new file is renamed into place. The
  kernel drops the lock of a killed process.
- write (a blob): temp file, then rename.
Temp and lock files start with "." and are never listed. POSIX only (link, flock).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

from softprompt.fileio import atomic_write, write_temp
from softprompt.registry.errors import ConflictError, NotFoundError, RegistryAccessError
from softprompt.registry.stores import Store


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore(Store):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryAccessError(f"registry {self.root} exists and is not a directory")

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        # Keys come from validated names; this guards the invariant rather than user input.
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise ValueError(f"bad storage key {key!r}")
        return self.root.joinpath(*parts)

    def read(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{self.uri}: {key} not found") from None
        except PermissionError as err:
            raise RegistryAccessError(f"{self.uri}: cannot read {key}: {err}") from err
        return data, _etag(data)

    def create(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: the If-None-Match: * of a file system
        except FileExistsError:
            raise ConflictError(f"{self.uri}: {key} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        return _etag(data)

    def replace(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        lock = path.with_name(f".{path.name}.lock")
        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                raise ConflictError(f"{self.uri}: {key} does not exist") from None
            if _etag(current) != etag:
                raise ConflictError(f"{self.uri}: {key} changed concurrently")
            atomic_write(path, data)
        return _etag(data)

    def write(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)

    def children(self, prefix: str) -> list[str]:
        """Like an S3 listing: a folder counts only if some visible file lies below it (a killed
        publisher can leave a version folder holding nothing but its temp file)."""
        try:
            entries = self._path(prefix).iterdir()
            return [p.name for p in entries if not p.name.startswith(".") and _has_files(p)]
        except (FileNotFoundError, NotADirectoryError):
            return []


def _has_files(path: Path) -> bool:
    if not path.is_dir():
        return True
    return any(not c.name.startswith(".") and _has_files(c) for c in path.iterdir())
