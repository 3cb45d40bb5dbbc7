"""The storage interface the registry runs on. Backends only store bytes, and their conditional
writes are what the registry's guarantees rest on (local.py with link and flock, s3.py with
If-None-Match and If-Match).
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Store(ABC):
    """Bytes under '/'-separated keys relative to the registry root, with conditional writes.

    `read` returns (data, etag); `create` fails with ConflictError if the key exists; `replace`
    fails with ConflictError unless the key's current etag equals `etag`. Missing keys raise
    NotFoundError. Backends map their failures to RegistryUnavailableError / RegistryAccessError.
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
        harmless)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names directly under `prefix/` (files and folders), unordered; [] when there are none."""
