"""The local cache of a registry, for speed and for pulls while the store is unreachable.

Only verified bytes are put here. Blobs are shared by every registry, since they are content
addressed, and they are re-verified on every read. Manifests and alias records (the last state
seen in the store) live under a folder per registry URI; the registry reads them from here only
while the store is unreachable, since a registry re-created under the same URI may hold other
versions now.

The cache is best effort. A cached file that cannot be read (a folder in its place, no
permission) is a miss, and one that cannot be written is skipped, each with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from softprompt.fileio import atomic_write
from softprompt.registry.errors import RegistryUnavailableError
from softprompt.registry.records import AliasState, alias_key, from_json

log = logging.getLogger(__name__)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        log.warning("cannot read the cached %s (%s); treating it as missing", path, err)
        return None


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as err:
        log.warning("cannot write %s to the cache (%s); skipped", path, err)


def default_cache_dir() -> Path:
    """$SOFTPROMPT_REGISTRY_CACHE, else ~/.cache/softprompt/registry."""
    default = Path.home() / ".cache" / "softprompt" / "registry"
    return Path(os.environ.get("SOFTPROMPT_REGISTRY_CACHE", default))


class Cache:
    """Local copies of verified manifests, alias records and blobs, for speed and offline pulls.

    Blobs are shared by every registry (they are content addressed and re-verified on read);
    manifests and aliases live under a folder per registry URI.
    """

    def __init__(self, root: str | Path, uri: str) -> None:
        self.root = Path(root)
        self.uri = uri
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", uri).strip("_")[-48:]
        digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
        self.keys = self.root / "registries" / f"{slug}-{digest}"

    def blob(self, digest: str) -> bytes | None:
        """The cached blob with this sha256, or None when absent or corrupt."""
        path = self.root / "blobs" / "sha256" / digest
        data = _read(path)
        if data is not None and hashlib.sha256(data).hexdigest() != digest:
            log.warning("cached blob %s is corrupt; fetching it again", path)
            return None
        return data

    def put_blob(self, digest: str, data: bytes) -> None:
        _write(self.root / "blobs" / "sha256" / digest, data)

    def get(self, key: str) -> bytes | None:
        return _read(self.keys / key)

    def put(self, key: str, data: bytes) -> None:
        _write(self.keys / key, data)

    def drop(self, key: str) -> None:
        """Forgets `key` (the store no longer holds it)."""
        try:
            (self.keys / key).unlink(missing_ok=True)
        except OSError as err:
            log.warning("cannot remove %s from the cache: %s", self.keys / key, err)

    def offline_alias(self, task: str, alias: str, err: RegistryUnavailableError) -> AliasState:
        """The alias as last read, for a pull while the store is unreachable (`err`).

        Logs a warning, since the alias may have moved since. Raises RegistryUnavailableError,
        chained to `err`, when the alias was never read through this cache.
        """
        key = alias_key(task, alias)
        cached = self.get(key)
        if cached is None:
            raise RegistryUnavailableError(
                f"{err}; and alias {alias!r} of task {task} is not in the cache {self.keys}"
            ) from err
        where = f"{self.uri.rstrip('/')}/{key}"
        state = AliasState.from_dict(from_json(cached, where), where)
        log.warning(
            "%s unreachable; using the cached alias %s/%s -> version %d (moved %s), "
            "which may be stale",
            self.uri, task, alias, state.version, state.moved_at,
        )
        return state
