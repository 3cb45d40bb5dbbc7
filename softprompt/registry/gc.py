"""Garbage collection removes what killed publishers left behind, safely while others publish.

Two kinds of garbage. Temp files (local directories only) are partial writes of a writer killed
before its rename or link; one that a live writer holds is kept (softprompt.fileio locks them).
Orphan blobs are blobs no manifest names, left by a publisher killed between its blob and its
manifest. Both are removed only once older than a grace period (`min_age_seconds`), and a blob
that any manifest names is never removed.

The race. A publisher writes its blob first, then creates the manifest naming it. A collection
lists the manifests, then the blobs, so a blob written before the blob listing, whose manifest
appears after the manifest listing, looks unreferenced. The grace period protects it as long as
no publish takes longer than that (rewriting an existing blob renews its age). Two more steps
close the race even with no grace period:
- the collector keeps the bytes of what it removes, lists the manifests again afterwards, and
  writes back any blob that a manifest created meanwhile names;
- a publisher, after creating its manifest, checks that its blob is still there and writes it
  again if not (Registry.publish).
A manifest created before the collector's second listing is seen by that listing; one created
after it is followed by the publisher's check, which then finds the blob gone. Either way the
blob is back, though a pull in that instant may find it missing; with the default grace period
of an hour that takes a publish lasting an hour.

Ages are measured against this machine's clock; on S3 the stored times are the server's, so a
clock skew larger than the grace period would defeat it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from softprompt.registry.errors import IntegrityError, NotFoundError
from softprompt.registry.records import SHA256_HEX, blob_key
from softprompt.registry.registry import Registry
from softprompt.registry.stores import Store, StoredObject

log = logging.getLogger(__name__)

DEFAULT_MIN_AGE_SECONDS = 3600.0
_BATCH = 64  # blobs removed (and held in memory for a write-back) between manifest listings


@dataclass
class GcReport:
    """What a collection removed (or, with dry_run, would remove) and what it kept."""

    dry_run: bool
    min_age_seconds: float
    temp_files: list[StoredObject] = field(default_factory=list)  # removed
    blobs: list[StoredObject] = field(default_factory=list)  # orphans removed
    referenced: int = 0  # blobs kept because a manifest names them
    young: int = 0  # orphan blobs and temp files kept because they are younger than the grace
    in_use: int = 0  # temp files kept because their writer is alive (it holds their lock)
    restored: list[str] = field(default_factory=list)  # digests written back (see the race)

    @property
    def bytes_removed(self) -> int:
        return sum(o.size for o in self.temp_files) + sum(o.size for o in self.blobs)

    def summary(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "min_age_seconds": self.min_age_seconds,
            "temp_files_removed": len(self.temp_files),
            "blobs_removed": len(self.blobs),
            "bytes_removed": self.bytes_removed,
            "blobs_referenced": self.referenced,
            "kept_younger_than_grace": self.young,
            "temp_files_in_use": self.in_use,
            "blobs_restored": len(self.restored),
            "removed": sorted(o.key for o in [*self.temp_files, *self.blobs]),
        }


def _named_blob(store: Store, key: str) -> str | None:
    """The blob digest the manifest at `key` names; None when it is gone.

    Raises IntegrityError when the manifest cannot be read as JSON at all, since the collector
    cannot then tell which blob it protects."""
    try:
        data, _ = store.read(key)
    except NotFoundError:
        return None
    where = f"{store.uri.rstrip('/')}/{key}"
    try:
        digest = json.loads(data).get("blob_sha256")
    except (ValueError, AttributeError, RecursionError) as err:
        raise IntegrityError(
            f"{where}: unreadable ({err}); cannot tell which blob it names, so nothing is "
            "collected until it is fixed or removed"
        ) from err
    return digest if isinstance(digest, str) else None


def _referenced(store: Store, seen: set[str]) -> set[str]:
    """The blob digests named by manifests under prompts/ not in `seen` (which gains them).

    Every manifest.json at any depth counts, in stray folders too, since keeping a blob is
    always safe.
    """
    digests = set()
    for obj in store.objects("prompts"):
        if obj.key.endswith("/manifest.json") and obj.key not in seen:
            seen.add(obj.key)
            digest = _named_blob(store, obj.key)
            if digest:
                digests.add(digest)
    return digests


def _remove_blobs(store: Store, doomed: list[StoredObject], seen: set[str],
                  report: GcReport) -> None:
    """Removes `doomed` blobs in batches, each followed by a listing of new manifests; writes
    back any removed blob one of them names."""
    for start in range(0, len(doomed), _BATCH):
        held = {}
        for obj in doomed[start:start + _BATCH]:
            try:
                held[obj.key.rsplit("/", 1)[1]] = store.read(obj.key)[0]
            except NotFoundError:
                continue  # another collector was faster
            store.delete(obj.key)
            report.blobs.append(obj)
        for digest in _referenced(store, seen) & set(held):
            log.warning("blob %s was removed as a manifest naming it appeared; writing it back",
                        digest[:12])
            store.write(blob_key(digest), held[digest])
            report.restored.append(digest)
            report.blobs = [o for o in report.blobs if not o.key.endswith(digest)]


def collect_garbage(registry: Registry, min_age_seconds: float = DEFAULT_MIN_AGE_SECONDS,
                    dry_run: bool = False) -> GcReport:
    """Removes temp files and unreferenced blobs older than `min_age_seconds` from the registry's
    store (only lists them with `dry_run`); safe while publishers run (see the module docstring).
    """
    if min_age_seconds < 0:
        raise ValueError(f"min_age_seconds must be >= 0, got {min_age_seconds}")
    store = registry.store
    report = GcReport(dry_run, min_age_seconds)
    now = time.time()
    for obj in store.temp_files():
        if now - obj.modified < min_age_seconds:
            report.young += 1
            continue
        if dry_run or store.delete_temp_file(obj.key):
            report.temp_files.append(obj)
        else:
            report.in_use += 1
    seen: set[str] = set()
    referenced = _referenced(store, seen)  # before the blobs: see the race
    doomed = []
    for obj in store.objects("blobs/sha256"):
        digest = obj.key.rsplit("/", 1)[1]
        if not SHA256_HEX.fullmatch(digest) or obj.key != blob_key(digest):
            continue  # not a blob of ours
        if digest in referenced:
            report.referenced += 1
        elif now - obj.modified < min_age_seconds:
            report.young += 1
        else:
            doomed.append(obj)
    if dry_run:
        report.blobs = doomed
    else:
        _remove_blobs(store, doomed, seen, report)
    log.info("gc %s: %s", registry.uri, report.summary())
    return report
