"""The registry's logic over a minimal storage interface; backends (local.py, s3.py) only store bytes.

Layout under the registry root (the same on every backend):

    blobs/sha256/<hex>                          the prompt tensor as safetensors (key "prompt"); immutable
    prompts/<task>/<version>/manifest.json      one per version, created exclusively (If-None-Match: *)
    prompts/<task>/aliases/<alias>.json         a movable pointer, replaced by compare-and-swap (If-Match)

Guarantees (what the tests prove, on both backends):
- Publishing uploads the blob first, then creates the manifest exclusively. Versions are integers
  1, 2, 3, ...: a publisher proposes max+1 and, when a racing publisher created that manifest first,
  tries the next number. Nothing is ever overwritten; a publisher killed midway leaves at most an
  unreferenced blob, never a manifest pointing at nothing.
- An alias file carries its whole history. Each move is a compare-and-swap on the file's ETag that
  appends one entry {seq, version, previous, moved_at, move_id}; so the history is a chain (each
  entry's `previous` is the prior entry's `version`, `seq` counts 1, 2, 3, ...) and every
  successful promote() is in it, under its own move_id: no update is lost.
- A conditional write whose answer was lost and whose client retried it sees its own write as
  the conflict; the random publish_id / move_id in the bytes tells it apart from a rival's.
- Orphan blobs (a publisher killed between blob and manifest) are unreferenced and harmless;
  nothing lists or loads them.
- Pull verifies the blob's sha256 (from the cache too), the tensor's shape and dtype against the
  manifest, and, when given one, the base-model fingerprint. Verified manifests and blobs are cached
  locally; when the store is unreachable, pull falls back to the cache (an alias then resolves to
  the version it last pointed to, with a warning).

Names: tasks match `[a-z0-9][a-z0-9_-]{0,63}` (as task specs do); aliases `[a-z][a-z0-9_-]{0,63}`
(a leading letter keeps them apart from version numbers). Nothing else can reach a storage key,
so no name can traverse paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import torch

from softprompt.fileio import atomic_write
from softprompt.prompt import PROMPT_KEY  # the tensor's name inside a prompt blob

log = logging.getLogger(__name__)

SCHEMA = 1
TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_ANY = object()  # promote() without expected_version: retry the compare-and-swap until it lands


# ---------------------------------------------------------------------------- errors
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
    """Stored bytes that do not verify: digest mismatch, malformed manifest, tensor unlike its manifest."""


class FingerprintMismatchError(RegistryError):
    """The prompt was trained on another base model than the one it is being loaded onto."""


class RegistryUnavailableError(RegistryError, ConnectionError):
    """The store cannot be reached (server down, network); retrying later may succeed."""


class RegistryAccessError(RegistryError, PermissionError):
    """The store refused us: wrong or missing credentials, missing bucket, no permission."""


# ---------------------------------------------------------------------------- names
def check_task(name: object) -> str:
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid task name {name!r}: use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def check_alias(name: object) -> str:
    if not isinstance(name, str) or not ALIAS_NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid alias name {name!r}: use 1-64 characters from a-z, 0-9, '_' and '-', starting with a letter"
        )
    return name


def parse_ref(ref: int | str) -> int | str:
    """A version number (int >= 1, or its decimal string) or an alias name."""
    if isinstance(ref, bool):
        raise InvalidNameError(f"invalid reference {ref!r}: a version number or an alias name")
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        version = int(ref)
        if version < 1:
            raise InvalidNameError(f"invalid version {ref!r}: versions start at 1")
        return version
    return check_alias(ref)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(obj: dict, where: str) -> bytes:
    try:
        return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as err:
        raise InvalidArtifactError(f"{where}: not JSON-serializable ({err})") from err


def _loads(data: bytes, where: str) -> dict:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"{where}: malformed JSON ({err})") from err
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------------------- records
# Manifest field -> accepted JSON types (None allowed where listed).
_TYPES: dict[str, tuple] = {
    "schema": (int,), "task": (str,), "version": (int,), "blob_sha256": (str,), "shape": (list,), "dtype": (str,),
    "base_model": (str,), "base_model_fingerprint": (str,), "init": (str, type(None)), "prompt_length": (int,),
    "objective": (str, type(None)), "hyperparameters": (dict,), "dataset_version": (str, type(None)),
    "code_version": (str, type(None)), "metrics": (dict,), "label_words": (list,), "template": (str, type(None)),
    "metric": (str, type(None)), "created_at": (str,), "publish_id": (str,),
    "spec_sha256": (str, type(None)), "data_source": (dict,),
}


@dataclass(frozen=True)
class Manifest:
    """Everything known about one immutable prompt version: the blob, its shape, and its lineage."""

    task: str
    version: int
    blob_sha256: str  # hex digest of the safetensors blob
    shape: list[int]  # [P, E]
    dtype: str  # e.g. "float32"
    base_model: str  # the model id the prompt was trained on
    base_model_fingerprint: str  # FrozenLM.fingerprint: "sha256:" + digest of the input-embedding matrix
    prompt_length: int
    created_at: str  # ISO 8601, UTC
    init: str | None = None
    objective: str | None = None
    hyperparameters: dict = field(default_factory=dict)
    dataset_version: str | None = None
    code_version: str | None = None
    metrics: dict = field(default_factory=dict)
    label_words: list[str] = field(default_factory=list)  # the verbalizer, in label order
    template: str | None = None  # the task's input template
    metric: str | None = None  # the task's metric name
    spec_sha256: str | None = None  # TaskSpec.digest: what in the task spec shapes training
    # Where the data came from: {"kind": "dvc-remote" | "dvc-repo" | "local", "version", and
    # "repo", "rev", "path", "remote" as far as known}; `dataset_version` is its DVC hash.
    data_source: dict = field(default_factory=dict)
    publish_id: str = ""  # unique per publish() call: tells a retried write of ours from a rival's
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> Manifest:
        """Validates a manifest read from `where`; errors name the field."""
        unknown = sorted(set(raw) - set(_TYPES))
        if unknown:
            raise IntegrityError(f"{where}: unknown manifest field(s) {unknown}")
        for f in fields(cls):
            if f.name not in raw:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise IntegrityError(f"{where}: manifest field {f.name!r} is missing")
                continue
            value = raw[f.name]
            if not isinstance(value, _TYPES[f.name]) or isinstance(value, bool):
                raise IntegrityError(f"{where}: manifest field {f.name!r} has type {type(value).__name__}")
        if raw.get("schema", SCHEMA) != SCHEMA:
            raise IntegrityError(f"{where}: manifest schema {raw['schema']} is not supported (this code reads {SCHEMA})")
        if not re.fullmatch(r"[0-9a-f]{64}", raw["blob_sha256"]):
            raise IntegrityError(f"{where}: manifest field 'blob_sha256' is not a sha256 hex digest")
        if len(raw["shape"]) != 2 or not all(isinstance(d, int) and d > 0 for d in raw["shape"]):
            raise IntegrityError(f"{where}: manifest field 'shape' must be [P, E] with positive sizes, got {raw['shape']}")
        return cls(**raw)


@dataclass(frozen=True)
class AliasState:
    """Where an alias points now, and every move it ever made (oldest first)."""

    task: str
    alias: str
    version: int
    previous: int | None  # the version it pointed to before the last move
    moved_at: str
    seq: int  # number of moves so far; equals len(history)
    history: list[dict] = field(default_factory=list)  # [{seq, version, previous, moved_at, move_id}, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> AliasState:
        try:
            state = cls(**raw)
        except TypeError as err:
            raise IntegrityError(f"{where}: malformed alias record ({err})") from err
        if not isinstance(state.version, int) or not isinstance(state.history, list) or state.seq != len(state.history):
            raise IntegrityError(f"{where}: malformed alias record (version {state.version!r}, seq {state.seq!r}, "
                                 f"{len(state.history) if isinstance(state.history, list) else '?'} history entries)")
        return state


# ---------------------------------------------------------------------------- storage
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
        """Unconditional write; only for content-addressed keys (rewriting the same bytes is harmless)."""

    @abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names directly under `prefix/` (files and folders), unordered; [] when there are none."""


class Cache:
    """Local copies of verified manifests, alias records and blobs, for speed and offline pulls.

    Blobs are shared by every registry (they are content addressed and re-verified on read);
    manifests and aliases live under a folder per registry URI.
    """

    def __init__(self, root: str | Path, uri: str) -> None:
        self.root = Path(root)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", uri).strip("_")[-48:]
        self.keys = self.root / "registries" / f"{slug}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"

    def blob(self, digest: str) -> bytes | None:
        path = self.root / "blobs" / "sha256" / digest
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning("cached blob %s is corrupt; fetching it again", path)
            return None
        return data

    def put_blob(self, digest: str, data: bytes) -> None:
        atomic_write(self.root / "blobs" / "sha256" / digest, data)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.keys / key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        atomic_write(self.keys / key, data)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOFTPROMPT_REGISTRY_CACHE", Path.home() / ".cache" / "softprompt" / "registry"))


# ---------------------------------------------------------------------------- the registry
_LINEAGE_FIELDS = ("task", "base_model", "base_model_fingerprint", "init", "prompt_length", "objective", "hyperparameters",
                   "dataset_version", "code_version", "metrics", "label_words", "template", "metric",
                   "spec_sha256", "data_source")


class Registry:
    """Immutable, verified prompt versions and compare-and-swap aliases over one Store."""

    def __init__(self, store: Store, cache_dir: str | Path | None = None) -> None:
        self.store = store
        self.uri = store.uri
        self.cache = Cache(cache_dir, store.uri) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _blob_key(digest: str) -> str:
        return f"blobs/sha256/{digest}"

    @staticmethod
    def _manifest_key(task: str, version: int) -> str:
        return f"prompts/{task}/{version}/manifest.json"

    @staticmethod
    def _alias_key(task: str, alias: str) -> str:
        return f"prompts/{task}/aliases/{alias}.json"

    def _where(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}"

    # ------------------------------------------------------------------ publish
    def publish(self, task: str, prompt: torch.Tensor, lineage: dict) -> Manifest:
        """Stores `prompt` [P, E] as the task's next version; returns its manifest.

        `lineage` holds the Manifest's lineage fields (see `lineage_from_run`); `base_model` and
        `base_model_fingerprint` are required.
        """
        check_task(task)
        blob, shape, dtype = self._serialize(task, prompt)
        fields_ = self._check_lineage(task, lineage, shape)
        _dumps(fields_, f"task {task}: lineage")  # fails before anything is stored
        digest = hashlib.sha256(blob).hexdigest()
        self.store.write(self._blob_key(digest), blob)  # first: a manifest never points at nothing
        version = max(self._versions(task), default=0) + 1
        publish_id = uuid.uuid4().hex
        for _ in range(10_000):
            manifest = Manifest(version=version, blob_sha256=digest, shape=shape, dtype=dtype, created_at=_now(),
                                publish_id=publish_id, **fields_)
            key = self._manifest_key(task, version)
            data = _dumps(manifest.to_dict(), self._where(key))
            try:
                self.store.create(key, data)
            except ConflictError:
                if not self._landed(key, data):
                    version += 1  # a racing publisher took this number
                    continue
            log.info("published %s", self._where(key))
            return manifest
        raise ConflictError(f"{self.uri}: task {task}: could not allocate a version number")

    @staticmethod
    def _serialize(task: str, prompt: torch.Tensor) -> tuple[bytes, list[int], str]:
        from safetensors.torch import save

        if not isinstance(prompt, torch.Tensor):
            raise InvalidArtifactError(f"task {task}: the prompt must be a torch.Tensor, got {type(prompt).__name__}")
        if prompt.dim() != 2 or 0 in prompt.shape:
            raise InvalidArtifactError(f"task {task}: the prompt must be [P, E] with P, E >= 1, got shape {list(prompt.shape)}")
        if not prompt.is_floating_point():
            raise InvalidArtifactError(f"task {task}: the prompt must be floating point, got {prompt.dtype}")
        if not bool(torch.isfinite(prompt).all()):
            raise InvalidArtifactError(f"task {task}: the prompt holds NaN or infinite values")
        tensor = prompt.detach().cpu().contiguous()
        # No metadata: identical prompts give identical bytes, hence one blob.
        return save({PROMPT_KEY: tensor}), list(tensor.shape), str(tensor.dtype).removeprefix("torch.")

    @staticmethod
    def _check_lineage(task: str, lineage: dict, shape: list[int]) -> dict:
        if not isinstance(lineage, dict):
            raise InvalidArtifactError(f"task {task}: lineage must be a dict, got {type(lineage).__name__}")
        unknown = sorted(set(lineage) - set(_LINEAGE_FIELDS))
        if unknown:
            raise InvalidArtifactError(f"task {task}: unknown lineage field(s) {unknown}; known: {list(_LINEAGE_FIELDS)}")
        out = {k: v for k, v in lineage.items() if v is not None}  # None: the Manifest default
        if out.setdefault("task", task) != task:
            raise InvalidArtifactError(f"task {task}: lineage is for task {lineage['task']!r}")
        for name in ("base_model", "base_model_fingerprint"):
            if not isinstance(out.get(name), str) or not out[name]:
                raise InvalidArtifactError(f"task {task}: lineage field {name!r} is required (a non-empty string)")
        if not FINGERPRINT.fullmatch(out["base_model_fingerprint"]):
            raise InvalidArtifactError(
                f"task {task}: lineage field 'base_model_fingerprint' must be 'sha256:<64 hex>' (FrozenLM.fingerprint), "
                f"got {out['base_model_fingerprint']!r}"
            )
        if out.setdefault("prompt_length", shape[0]) != shape[0]:
            raise InvalidArtifactError(f"task {task}: lineage prompt_length {out['prompt_length']} but the prompt has P={shape[0]}")
        for name, kinds in (("hyperparameters", dict), ("metrics", dict), ("label_words", list),
                            ("data_source", dict)):
            if name in out and not isinstance(out[name], kinds):
                raise InvalidArtifactError(f"task {task}: lineage field {name!r} must be a {kinds.__name__}")
        for name in ("init", "objective", "dataset_version", "code_version", "template", "metric",
                     "spec_sha256"):
            if out.get(name) is not None and not isinstance(out[name], str):
                raise InvalidArtifactError(f"task {task}: lineage field {name!r} must be a string or None")
        return out

    def _landed(self, key: str, data: bytes) -> bool:
        """After a failed conditional write: did our own write land after all? (A client retry of a
        request whose answer was lost sees its own write as the conflict.) The bytes carry a
        random publish_id / move_id, so equality identifies the writer."""
        try:
            return self.store.read(key)[0] == data
        except NotFoundError:
            return False

    # ------------------------------------------------------------------ read
    def _versions(self, task: str) -> list[int]:
        return sorted(int(name) for name in self.store.children(f"prompts/{task}") if name.isdigit() and name[0] != "0")

    def list_tasks(self) -> list[str]:
        return sorted(name for name in self.store.children("prompts") if TASK_NAME.fullmatch(name))

    def list_versions(self, task: str) -> list[Manifest]:
        """Every version's manifest, oldest first; [] for an unknown task."""
        check_task(task)
        return [self._read_manifest(task, v) for v in self._versions(task)]

    def manifest(self, task: str, ref: int | str) -> Manifest:
        """The manifest of a version number or of the version an alias points to."""
        check_task(task)
        ref = parse_ref(ref)
        version = ref if isinstance(ref, int) else self.alias(task, ref).version
        return self._read_manifest(task, version)

    def _read_manifest(self, task: str, version: int, offline_ok: bool = False) -> Manifest:
        key = self._manifest_key(task, version)
        where = self._where(key)
        cached = self.cache.get(key) if self.cache else None
        if cached is not None:
            try:
                return self._check_manifest(Manifest.from_dict(_loads(cached, where), where), task, version, where)
            except IntegrityError:
                log.warning("cached manifest for %s is corrupt; fetching it again", where)
        try:
            data, _ = self.store.read(key)
        except NotFoundError:
            raise NotFoundError(f"{self.uri}: task {task} has no version {version}") from None
        manifest = self._check_manifest(Manifest.from_dict(_loads(data, where), where), task, version, where)
        if self.cache:
            self.cache.put(key, data)  # immutable: safe to keep forever
        return manifest

    @staticmethod
    def _check_manifest(m: Manifest, task: str, version: int, where: str) -> Manifest:
        if m.task != task or m.version != version:
            raise IntegrityError(f"{where}: manifest says task {m.task!r} version {m.version}, expected {task!r} version {version}")
        return m

    def alias(self, task: str, alias: str) -> AliasState:
        """Where `alias` points now (with its history)."""
        state, _ = self._read_alias(check_task(task), check_alias(alias))
        if state is None:
            raise NotFoundError(f"{self.uri}: task {task} has no alias {alias!r}")
        return state

    def aliases(self, task: str) -> dict[str, AliasState]:
        check_task(task)
        names = sorted(n.removesuffix(".json") for n in self.store.children(f"prompts/{task}/aliases") if n.endswith(".json"))
        return {n: self.alias(task, n) for n in names if ALIAS_NAME.fullmatch(n)}

    def _read_alias(self, task: str, alias: str) -> tuple[AliasState | None, str | None]:
        key = self._alias_key(task, alias)
        try:
            data, etag = self.store.read(key)
        except NotFoundError:
            return None, None
        state = AliasState.from_dict(_loads(data, self._where(key)), self._where(key))
        if self.cache:
            self.cache.put(key, data)
        return state, etag

    # ------------------------------------------------------------------ pull
    def pull(self, task: str, ref: int | str = "production", expected_fingerprint: str | None = None) -> tuple[torch.Tensor, Manifest]:
        """The verified prompt [P, E] and its manifest.

        Refuses a blob whose sha256 differs from the manifest's (IntegrityError) and, when
        `expected_fingerprint` is given (the FrozenLM.fingerprint of the model it will be loaded
        onto), a prompt trained on another base model (FingerprintMismatchError). Works offline
        from the cache when the store is unreachable.
        """
        check_task(task)
        ref = parse_ref(ref)
        try:
            m = self.manifest(task, ref)
        except RegistryUnavailableError as err:
            m = self._offline_manifest(task, ref, err)
        if expected_fingerprint is not None and m.base_model_fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"{self.uri}: task {task} version {m.version} was trained on base model {m.base_model!r} "
                f"(fingerprint {m.base_model_fingerprint}); refusing to load it onto a model with fingerprint {expected_fingerprint}"
            )
        data = self.cache.blob(m.blob_sha256) if self.cache else None
        if data is None:
            key = self._blob_key(m.blob_sha256)
            try:
                data, _ = self.store.read(key)
            except NotFoundError:
                raise IntegrityError(f"{self.uri}: task {task} version {m.version}: blob {key} is missing") from None
            got = hashlib.sha256(data).hexdigest()
            if got != m.blob_sha256:
                raise IntegrityError(
                    f"{self.uri}: task {task} version {m.version}: blob {key} is corrupt (sha256 {got}, manifest says {m.blob_sha256}); refusing it"
                )
            if self.cache:
                self.cache.put_blob(m.blob_sha256, data)
        return self._deserialize(data, m), m

    def _offline_manifest(self, task: str, ref: int | str, err: RegistryUnavailableError) -> Manifest:
        if self.cache is None:
            raise err
        version = ref
        if isinstance(ref, str):
            key = self._alias_key(task, ref)
            cached = self.cache.get(key)
            if cached is None:
                raise RegistryUnavailableError(f"{err}; and alias {ref!r} of task {task} is not in the cache {self.cache.keys}") from err
            state = AliasState.from_dict(_loads(cached, self._where(key)), self._where(key))
            version = state.version
            log.warning("%s unreachable; using the cached alias %s/%s -> version %d (moved %s), which may be stale",
                        self.uri, task, ref, version, state.moved_at)
        try:
            return self._read_manifest(task, version)
        except RegistryUnavailableError:
            raise RegistryUnavailableError(f"{err}; and version {version} of task {task} is not in the cache") from err

    @staticmethod
    def _deserialize(data: bytes, m: Manifest) -> torch.Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load

        where = f"task {m.task} version {m.version} blob {m.blob_sha256[:12]}"
        try:
            tensors = load(data)
        except SafetensorError as err:
            raise IntegrityError(f"{where}: not a safetensors file ({err})") from err
        if set(tensors) != {PROMPT_KEY}:
            raise IntegrityError(f"{where}: expected one tensor {PROMPT_KEY!r}, found {sorted(tensors)}")
        prompt = tensors[PROMPT_KEY]
        if list(prompt.shape) != m.shape or str(prompt.dtype).removeprefix("torch.") != m.dtype:
            raise IntegrityError(f"{where}: tensor {list(prompt.shape)} {prompt.dtype} does not match the manifest's {m.shape} {m.dtype}")
        return prompt

    # ------------------------------------------------------------------ aliases
    def promote(self, task: str, alias: str, version: int, expected_version: int | None | object = _ANY) -> AliasState:
        """Points `alias` at `version` by compare-and-swap on the alias record; returns the new state.

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
        key = self._alias_key(task, alias)
        for attempt in range(200):
            current, etag = self._read_alias(task, alias)
            now = current.version if current else None
            if expected_version is not _ANY and now != expected_version:
                raise AliasConflictError(
                    f"{self.uri}: alias {task}/{alias} points to version {now}, not the expected {expected_version}; not moved"
                )
            seq = (current.seq if current else 0) + 1
            moved_at = _now()
            entry = {"seq": seq, "version": version, "previous": now, "moved_at": moved_at, "move_id": uuid.uuid4().hex}
            state = AliasState(task, alias, version, now, moved_at, seq, [*(current.history if current else []), entry])
            data = _dumps(state.to_dict(), self._where(key))
            try:
                if current is None:
                    self.store.create(key, data)
                else:
                    self.store.replace(key, data, etag)
            except ConflictError:
                if self._landed(key, data):
                    return state
                if expected_version is not _ANY:
                    raise AliasConflictError(f"{self.uri}: alias {task}/{alias} moved concurrently; not moved") from None
                time.sleep(random.uniform(0, 0.02 * min(attempt + 1, 10)))  # jitter: racers spread out
                continue
            log.info("alias %s/%s: %s -> %d", task, alias, now, version)
            return state
        raise AliasConflictError(f"{self.uri}: alias {task}/{alias}: gave up after 200 concurrent moves")
