"""The registry's logic over a minimal storage interface (stores.py). Backends (local.py, s3.py)
only store bytes. The records and the keys they live under are described in records.py, the same
on every backend.

Guarantees (what the tests prove, on both backends):
- Publishing uploads the blob first, then creates the manifest exclusively (If-None-Match: *).
  Versions are integers 1, 2, 3, ... A publisher proposes max+1 and, when a racing publisher
  created that manifest first, tries the next number. Nothing is ever overwritten; a publisher
  killed midway leaves at most an unreferenced blob, never a manifest pointing at nothing.
- An alias file carries its whole history. Each move is a compare-and-swap on the file's ETag
  (If-Match) that appends one entry {seq, version, previous, moved_at, move_id}. So the history
  is a chain (each entry's `previous` is the prior entry's `version`, `seq` counts 1, 2, 3, ...)
  and every successful promote() is in it, under its own move_id. No update is lost.
- A conditional write whose answer was lost and whose client retried it sees its own write as
  the conflict; the random publish_id / move_id in the bytes tells it apart from a rival's.
- Every manifest passes records.check_manifest: at publish, before anything is stored
  (InvalidArtifactError), and at every read (IntegrityError naming the stored object).
- Orphan blobs (a publisher killed between blob and manifest) are unreferenced and harmless;
  nothing lists or loads them, and `gc.collect_garbage` removes them once they are old. After
  creating its manifest a publisher checks that its blob is still there, and writes it again if
  a collection removed it meanwhile.
- Only canonical version folders count (`1`, `2`, ..., never `01` or `foo`); stray entries are
  logged and ignored.
- Pull verifies the blob's sha256 (from the cache too), the tensor's shape and dtype against the
  manifest, and, when given one, the base-model fingerprint. Manifests and alias records are
  read from the store whenever it is reachable, so a registry re-created under the same URI is
  never answered from an older cache; verified copies are cached locally (cache.py). When the
  store is unreachable, manifest() and pull() fall back to the cache, where an alias resolves to
  the version it last pointed to, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from softprompt.registry.cache import Cache
from softprompt.registry.errors import (
    AliasConflictError,
    ConflictError,
    FingerprintMismatchError,
    IntegrityError,
    InvalidNameError,
    NotFoundError,
    RegistryUnavailableError,
)
from softprompt.registry.lineage import check_lineage
from softprompt.registry.records import (
    ALIAS_NAME,
    TASK_NAME,
    VERSION_NAME,
    AliasState,
    Manifest,
    PromptBlob,
    alias_key,
    blob_key,
    check_alias,
    check_manifest,
    check_task,
    deserialize_prompt,
    from_json,
    manifest_key,
    moved_alias,
    parse_ref,
    serialize_prompt,
    timestamp,
    to_json,
)
from softprompt.registry.stores import Store

log = logging.getLogger(__name__)

_ANY = object()  # promote() without expected_version: retry the compare-and-swap until it lands
_PUBLISH_ATTEMPTS = 10_000  # version numbers a publisher tries before giving up
_PROMOTE_ATTEMPTS = 200  # compare-and-swap rounds a promote() without expected_version tries


class PulledPrompt(NamedTuple):
    """What pull() returns: the verified prompt [P, E] and its manifest."""

    prompt: torch.Tensor
    manifest: Manifest


class Registry:
    """Immutable, verified prompt versions and compare-and-swap aliases over one Store."""

    def __init__(self, store: Store, cache_dir: str | Path | None = None) -> None:
        self.store = store
        self.uri = store.uri
        self.cache = Cache(cache_dir, store.uri) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    def _where(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    # ------------------------------------------------------------------ publish
    def publish(self, task: str, prompt: torch.Tensor, lineage: dict) -> Manifest:
        """Stores `prompt` [P, E] as the task's next version; returns its manifest.

        `lineage` holds the Manifest's lineage fields (see `lineage_from_run`); `base_model`,
        `base_model_fingerprint`, `template` and `label_words` are required. The manifest is
        checked (records.check_manifest) before anything is stored.
        """
        check_task(task)
        blob = serialize_prompt(task, prompt)
        draft = check_lineage(task, lineage, blob)  # fails before anything is stored
        # The blob goes first, so that a manifest never points at nothing.
        self.store.write(blob_key(blob.sha256), blob.data)
        version = max(self._versions(task), default=0) + 1
        for _ in range(_PUBLISH_ATTEMPTS):
            manifest = replace(draft, version=version, created_at=timestamp())
            key = manifest_key(task, version)
            data = to_json(manifest.to_dict(), self._where(key))
            try:
                self.store.create(key, data)
            except ConflictError:
                if not self._landed(key, data):
                    version += 1  # a racing publisher took this number
                    continue
            self._keep_blob(blob, key)
            log.info("published %s", self._where(key))
            return manifest
        raise ConflictError(f"{self.uri}: task {task}: could not allocate a version number")

    def _keep_blob(self, blob: PromptBlob, key: str) -> None:
        """Writes the blob again if a garbage collection removed it between our blob write and
        the manifest `key` naming it (gc.py explains the race)."""
        if not self.store.exists(blob_key(blob.sha256)):
            log.warning("blob %s of %s was removed meanwhile; writing it again",
                        blob.sha256[:12], self._where(key))
            self.store.write(blob_key(blob.sha256), blob.data)

    def _landed(self, key: str, data: bytes) -> bool:
        """After a failed conditional write, did our own write land after all? (A client retry of
        a request whose answer was lost sees its own write as the conflict.) The bytes carry a
        random publish_id / move_id, so equality identifies the writer."""
        try:
            return self.store.read(key)[0] == data
        except NotFoundError:
            return False

    # ------------------------------------------------------------------ read
    def _versions(self, task: str) -> list[int]:
        """The version numbers stored for `task`: folder names in canonical form only (ASCII
        decimal, no leading zero). Anything else is logged and ignored."""
        names = set(self.store.children(f"prompts/{task}"))
        stray = sorted(n for n in names - {"aliases"} if not VERSION_NAME.fullmatch(n))
        if stray:
            log.warning("%s: ignoring %s, not version numbers", self._where(f"prompts/{task}"),
                        stray)
        return sorted(int(n) for n in names if VERSION_NAME.fullmatch(n))

    def list_tasks(self) -> list[str]:
        names = set(self.store.children("prompts"))
        stray = sorted(n for n in names if not TASK_NAME.fullmatch(n))
        if stray:
            log.warning("%s: ignoring %s, not task names", self._where("prompts"), stray)
        return sorted(names - set(stray))

    def list_versions(self, task: str) -> list[Manifest]:
        """Every version's manifest, oldest first; [] for an unknown task.

        A version folder without a manifest (a stray file or folder) is logged and skipped; a
        manifest that fails its checks raises IntegrityError naming it, rather than leave out a
        version (a service serving the N newest would silently serve others)."""
        check_task(task)
        manifests = []
        for version in self._versions(task):
            try:
                manifests.append(self._read_manifest(task, version))
            except NotFoundError:
                folder = self._where(f"prompts/{task}/{version}")
                log.warning("%s holds no manifest; ignored", folder)
        return manifests

    def manifest(self, task: str, ref: int | str) -> Manifest:
        """The manifest of a version number or of the version an alias points to.

        Read from the store; from the cache only while the store is unreachable (with a
        warning)."""
        check_task(task)
        ref = parse_ref(ref)
        try:
            version = ref if isinstance(ref, int) else self.alias(task, ref).version
            return self._read_manifest(task, version)
        except RegistryUnavailableError as err:
            return self._offline_manifest(task, ref, err)

    def _read_manifest(self, task: str, version: int) -> Manifest:
        """The manifest in the store, which also refreshes the cached copy: a registry
        re-created under the same URI may hold another prompt under this version now."""
        key = manifest_key(task, version)
        try:
            data, _ = self.store.read(key)
        except NotFoundError:
            if self.cache:
                self.cache.drop(key)
            raise NotFoundError(f"{self.uri}: task {task} has no version {version}") from None
        manifest = _parse_manifest(data, task, version, self._where(key))
        if self.cache and self.cache.get(key) != data:
            self.cache.put(key, data)
        return manifest

    def alias(self, task: str, alias: str) -> AliasState:
        """Where `alias` points now (with its history)."""
        state, _ = self._read_alias(check_task(task), check_alias(alias))
        if state is None:
            raise NotFoundError(f"{self.uri}: task {task} has no alias {alias!r}")
        return state

    def aliases(self, task: str) -> dict[str, AliasState]:
        check_task(task)
        children = set(self.store.children(f"prompts/{task}/aliases"))
        names = sorted(n.removesuffix(".json") for n in children
                       if n.endswith(".json") and ALIAS_NAME.fullmatch(n.removesuffix(".json")))
        stray = sorted(children - {f"{n}.json" for n in names})
        if stray:
            log.warning("%s: ignoring %s, not <alias>.json",
                        self._where(f"prompts/{task}/aliases"), stray)
        return {n: self.alias(task, n) for n in names}

    def _read_alias(self, task: str, alias: str) -> tuple[AliasState | None, str | None]:
        """The alias record and its etag, or (None, None) when the alias does not exist."""
        key = alias_key(task, alias)
        where = self._where(key)
        try:
            data, etag = self.store.read(key)
        except NotFoundError:
            if self.cache:
                self.cache.drop(key)
            return None, None
        state = AliasState.from_dict(from_json(data, where), where)
        if (state.task, state.alias) != (task, alias):
            raise IntegrityError(
                f"{where}: alias record says {state.task!r}/{state.alias!r}, "
                f"expected {task!r}/{alias!r}"
            )
        if self.cache and self.cache.get(key) != data:
            self.cache.put(key, data)
        return state, etag

    # ------------------------------------------------------------------ pull
    def pull(self, task: str, ref: int | str = "production",
             expected_fingerprint: str | None = None) -> PulledPrompt:
        """The verified prompt [P, E] and its manifest.

        Refuses a blob whose sha256 differs from the manifest's (IntegrityError) and, when
        `expected_fingerprint` is given (the FrozenLM.fingerprint of the model it will be loaded
        onto), a prompt trained on another base model (FingerprintMismatchError). Works offline
        from the cache when the store is unreachable.
        """
        m = self.manifest(task, ref)
        if expected_fingerprint is not None and m.base_model_fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"{self.uri}: task {task} version {m.version} was trained on base model "
                f"{m.base_model!r} (fingerprint {m.base_model_fingerprint}); refusing to load it "
                f"onto a model with fingerprint {expected_fingerprint}"
            )
        return PulledPrompt(deserialize_prompt(self._read_blob(m), m), m)

    def _read_blob(self, m: Manifest) -> bytes:
        """The blob of `m`, verified against its sha256, from the cache when it holds it."""
        data = self.cache.blob(m.blob_sha256) if self.cache else None
        if data is not None:
            return data
        key = blob_key(m.blob_sha256)
        where = f"{self.uri}: task {m.task} version {m.version}: blob {key}"
        try:
            data, _ = self.store.read(key)
        except NotFoundError:
            raise IntegrityError(f"{where} is missing") from None
        got = hashlib.sha256(data).hexdigest()
        if got != m.blob_sha256:
            raise IntegrityError(
                f"{where} is corrupt (sha256 {got}, manifest says {m.blob_sha256}); refusing it"
            )
        if self.cache:
            self.cache.put_blob(m.blob_sha256, data)
        return data

    def _offline_manifest(self, task: str, ref: int | str,
                          err: RegistryUnavailableError) -> Manifest:
        """The manifest `ref` names, from the cache alone, while the store is unreachable."""
        if self.cache is None:
            raise err
        version = ref if isinstance(ref, int) else self.cache.offline_alias(task, ref, err).version
        key = manifest_key(task, version)
        cached = self.cache.get(key)
        if cached is None:
            raise RegistryUnavailableError(
                f"{err}; and version {version} of task {task} is not in the cache"
            ) from err
        m = _parse_manifest(cached, task, version, f"{self.cache.keys / key} (cached)")
        if isinstance(ref, int):  # for an alias, offline_alias has warned already
            log.warning(
                "%s unreachable; using the cached manifest of %s version %d (publish %s), "
                "which may be stale", self.uri, task, version, m.publish_id,
            )
        return m

    # ------------------------------------------------------------------ aliases
    def promote(self, task: str, alias: str, version: int,
                expected_version: int | None | object = _ANY) -> AliasState:
        """Points `alias` at `version` by compare-and-swap on the alias record, and returns the
        new state.

        With `expected_version` (an int, or None for "the alias must not exist yet") the move
        happens only if the alias points there now, else AliasConflictError. Without it the
        compare-and-swap is retried until it lands; every move is recorded, none is lost.
        """
        check_task(task)
        check_alias(alias)
        version = parse_ref(version)
        if not isinstance(version, int):
            raise InvalidNameError(f"promote needs a version number, got {version!r}")
        self._read_manifest(task, version)  # the version must exist
        key = alias_key(task, alias)
        name = f"{self.uri}: alias {task}/{alias}"
        for attempt in range(_PROMOTE_ATTEMPTS):
            current, etag = self._read_alias(task, alias)
            now = current.version if current else None
            if expected_version is not _ANY and now != expected_version:
                raise AliasConflictError(
                    f"{name} points to version {now}, not the expected {expected_version}; "
                    "not moved"
                )
            state = moved_alias(current, task, alias, version)
            data = to_json(state.to_dict(), self._where(key))
            try:
                if current is None:
                    self.store.create(key, data)
                else:
                    self.store.replace(key, data, etag)
            except ConflictError:
                if self._landed(key, data):
                    return state
                if expected_version is not _ANY:
                    raise AliasConflictError(f"{name} moved concurrently; not moved") from None
                # Random jitter, so that racing promoters spread out.
                time.sleep(random.uniform(0, 0.02 * min(attempt + 1, 10)))
                continue
            log.info("alias %s/%s: %s -> %d", task, alias, now, version)
            return state
        raise AliasConflictError(f"{name}: gave up after {_PROMOTE_ATTEMPTS} concurrent moves")


def _parse_manifest(data: bytes, task: str, version: int, where: str) -> Manifest:
    """The manifest stored at `where`, once it passes records.check_manifest and is known to be
    that of `task` version `version`; IntegrityError naming `where` otherwise."""
    m = check_manifest(Manifest.from_dict(from_json(data, where), where), where)
    if m.task != task or m.version != version:
        raise IntegrityError(
            f"{where}: manifest says task {m.task!r} version {m.version}, "
            f"expected {task!r} version {version}"
        )
    return m
