"""The registry's errors. Every one is a RegistryError, and its message names the registry, task,
version or alias concerned. Several also derive from the builtin a caller would expect (a bad name
is a ValueError, an unreachable store a ConnectionError), so generic handlers still catch them.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every registry error; messages name the registry, task, version or alias."""


class InvalidNameError(RegistryError, ValueError):
    """A task or alias name outside the documented charset."""


class InvalidArtifactError(RegistryError, ValueError):
    """A prompt or lineage that cannot be published (wrong shape, non-finite values, bad field)."""


class NotFoundError(RegistryError, LookupError):
    """No such task, version, alias or key."""


class ConflictError(RegistryError):
    """A conditional write lost: the key existed (create) or changed (compare-and-swap)."""


class AliasConflictError(ConflictError):
    """promote(expected_version=...) found the alias pointing elsewhere."""


class IntegrityError(RegistryError):
    """Stored bytes that do not verify (digest mismatch, malformed manifest, a tensor unlike its
    manifest), or a store whose layout is broken (a folder where a file belongs, or a file where
    a folder belongs)."""


class FingerprintMismatchError(RegistryError):
    """The prompt was trained on another base model than the one it is being loaded onto."""


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The store cannot be reached (server down, network); retrying later may succeed."""


class RegistryAccessError(RegistryError, PermissionError):
    """The store refused us (wrong or missing credentials, missing bucket, no permission)."""
