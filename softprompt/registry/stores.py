"""The storage interface the registry runs on. Backends only store bytes, and their conditional
writes are what the registry's guarantees rest on (local.py with link and flock, s3.py with
If-None-Match and If-Match).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple


class StoredObject(NamedTuple):
    """One stored file, as listed for garbage collection."""

    key: str  # relative to the registry root
    size: int  # bytes
    modified: float  # last write, in seconds since the epoch (S3: the server's clock)


class Store(ABC):
    """Bytes under '/'-separated keys relative to the registry root, with conditional writes.

    `read` returns (data, etag); `create` fails with ConflictError if the key exists; `replace`
    fails with ConflictError unless the key's current etag equals `etag`. Missing keys raise
    NotFoundError. Backends map their failures to RegistryError subclasses naming the key
    (RegistryUnavailableError, RegistryAccessError, IntegrityError for a broken layout), never
    to a bare OSError.
    """

    uri: str

    @abstractmethod
    def read(self, key: str) -> tuple[bytes, str]: ...

    @abstractmethod
    def create(self, key: str, data: bytes) -> str: ...

    @abstractmethod
    def replace(self, key: str, data: bytes, etag: str) -> str: ...

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Unconditional write, only for content-addressed keys (where rewriting the same bytes is
        harmless). It renews the key's modification time."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether `key` holds an object (without reading it)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names directly under `prefix/` (files and folders), unordered; [] when there are none."""

    @abstractmethod
    def objects(self, prefix: str) -> list[StoredObject]:
        """Every object at any depth under `prefix/`, unordered; [] when there are none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes `key`; a key that is already gone is no error."""

    def temp_files(self) -> list[StoredObject]:
        """Partial writes left behind by killed writers (none on a backend with atomic PUTs)."""
        return []

    def delete_temp_file(self, key: str) -> bool:
        """Removes one of `temp_files()` unless its writer is still alive; True when removed."""
        raise NotImplementedError(f"{type(self).__name__} keeps no temp files")
