"""The local-directory backend (the embedded default): the same layout and guarantees as S3.

- create (a version's manifest): the bytes go to a unique temp file, then `os.link` publishes it
  under the final name; link fails if the name exists, so exactly one of several racing
  publishers wins, and a reader never sees a half-written file.
- replace (an alias): under an exclusive `flock` on a lock file beside it, the current bytes are
  compared with the expected etag (their sha256), then the new file is renamed into place. The
  kernel drops the lock of a killed process.
- write (a blob): temp file, then rename.
Temp and lock files start with "." and are never listed as keys; `temp_files` lists the temp
files (softprompt.fileio.TEMP_NAME) for garbage collection, which removes only those no live
writer holds. Every OSError becomes a RegistryError
naming the key: a folder where a file belongs (or the reverse) is an IntegrityError, a refused
permission a RegistryAccessError. POSIX only (link, flock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from pathlib import Path

from softprompt.fileio import TEMP_NAME, atomic_write, publish_temp, remove_abandoned_temp
from softprompt.registry.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RegistryAccessError,
    RegistryError,
)
from softprompt.registry.stores import Store, StoredObject

_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)
_LAYOUT = (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY)


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

    @contextlib.contextmanager
    def _errors(self, what: str, key: str):
        """Turns an OSError while doing `what` to `key` into a RegistryError naming both."""
        try:
            yield
        except OSError as err:
            where = f"{self.uri}: cannot {what} {key}"
            if err.errno in _ACCESS:
                raise RegistryAccessError(f"{where}: {err.strerror}") from err
            if err.errno in _LAYOUT:
                raise IntegrityError(
                    f"{where}: {err.strerror} (a folder where a file belongs, or a file where "
                    "a folder belongs)"
                ) from err
            raise RegistryError(f"{where}: {err.strerror or err}") from err

    def read(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        with self._errors("read", key):
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                raise NotFoundError(f"{self.uri}: {key} not found") from None
        return data, _etag(data)

    def create(self, key: str, data: bytes) -> str:
        with self._errors("create", key):
            try:
                # os.link is atomic and exclusive: the If-None-Match: * of a file system.
                publish_temp(self._path(key), data, os.link)
            except FileExistsError as err:
                if err.filename2 is None:
                    raise  # from mkdir: a file stands where a parent folder belongs
                raise ConflictError(f"{self.uri}: {key} already exists") from None
        return _etag(data)

    def replace(self, key: str, data: bytes, etag: str) -> str:
        path = self._path(key)
        lock = path.with_name(f".{path.name}.lock")
        with self._errors("replace", key), lock.open("a") as handle:
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
        path = self._path(key)
        with self._errors("write", key):
            atomic_write(path, data)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._errors("check", key):
            return path.is_file()

    def children(self, prefix: str) -> list[str]:
        """Like an S3 listing: a folder counts only if some visible file lies below it (a killed
        publisher can leave a version folder holding nothing but its temp file)."""
        with self._errors("list", prefix):
            try:
                entries = self._path(prefix).iterdir()
                return [p.name for p in entries if not p.name.startswith(".") and _has_files(p)]
            except (FileNotFoundError, NotADirectoryError):
                return []

    def objects(self, prefix: str) -> list[StoredObject]:
        return [o for o, hidden in self._walk(prefix) if not hidden]

    def temp_files(self) -> list[StoredObject]:
        return [o for o, hidden in self._walk("") if hidden and TEMP_NAME.fullmatch(hidden)]

    def _walk(self, prefix: str):
        """(StoredObject, hidden name or "") for every file under `prefix` (all with "").

        Files in hidden folders are skipped, and so are folders that vanish while listed or are
        files. Any other error raises, since a listing that misses a manifest would let gc
        remove the blob it names."""
        top = self._path(prefix) if prefix else self.root
        with self._errors("list", prefix or "the registry"):
            for folder, dirs, files in os.walk(top, onerror=_raise_unless_gone):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    path = Path(folder, name)
                    try:
                        st = path.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    key = path.relative_to(self.root).as_posix()
                    hidden = name if name.startswith(".") else ""
                    yield StoredObject(key, st.st_size, st.st_mtime), hidden

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors("delete", key):
            path.unlink(missing_ok=True)

    def delete_temp_file(self, key: str) -> bool:
        """Removes an abandoned temp file; False when its writer still holds it (or it is gone)."""
        *folders, name = key.split("/")
        if not TEMP_NAME.fullmatch(name):
            raise ValueError(f"not a temp file: {key!r}")
        folder = self._path("/".join(folders)) if folders else self.root
        with self._errors("delete", key):
            return remove_abandoned_temp(folder / name)


def _raise_unless_gone(err: OSError) -> None:
    """os.walk's error handler: a folder that is gone (or a file) holds nothing to list."""
    if not isinstance(err, FileNotFoundError | NotADirectoryError):
        raise err


def _has_files(path: Path) -> bool:
    if not path.is_dir():
        return True
    return any(not c.name.startswith(".") and _has_files(c) for c in path.iterdir())
