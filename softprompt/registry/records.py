"""What the registry stores, where, and how it is checked on the way in and out.

Three records, each under a key derived from validated names only:

    blobs/sha256/<hex>                          the prompt tensor as safetensors (key "prompt")
    prompts/<task>/<version>/manifest.json      a Manifest, one per version
    prompts/<task>/aliases/<alias>.json         an AliasState, a movable pointer with its history

Names: tasks match `[a-z0-9][a-z0-9_-]{0,63}` (as task specs do); aliases `[a-z][a-z0-9_-]{0,63}`
(a leading letter keeps them apart from version numbers). Nothing else can reach a storage key,
so no name can traverse paths.

Reading is strict. A manifest with an unknown, missing or mistyped field, an alias record whose
history does not add up, or a blob whose tensor differs from its manifest raises IntegrityError
naming the stored object. JSON is written with sorted keys and without NaN, so equal records are
equal bytes.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

import torch

from softprompt.prompt import PROMPT_KEY  # the tensor's name inside a prompt blob
from softprompt.registry.errors import IntegrityError, InvalidArtifactError, InvalidNameError

SCHEMA = 1
TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")


# ---------------------------------------------------------------------------- names and keys
def _check_name(name: object, kind: str, pattern: re.Pattern, first: str) -> str:
    """`name` itself where it fully matches `pattern`, else InvalidNameError.

    The error says what a `kind` name may hold and that it starts with `first`."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: use 1-64 characters from a-z, 0-9, '_' and '-', "
            f"starting with {first}"
        )
    return name


def check_task(name: object) -> str:
    return _check_name(name, "task", TASK_NAME, "a letter or digit")


def check_alias(name: object) -> str:
    return _check_name(name, "alias", ALIAS_NAME, "a letter")


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


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest}"


def manifest_key(task: str, version: int) -> str:
    return f"prompts/{task}/{version}/manifest.json"


def alias_key(task: str, alias: str) -> str:
    return f"prompts/{task}/aliases/{alias}.json"


# ---------------------------------------------------------------------------- JSON
def timestamp() -> str:
    """Now, as ISO 8601 in UTC with milliseconds (e.g. 2025-01-31T12:00:00.000Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(obj: dict, where: str) -> bytes:
    """The bytes a record is stored as; InvalidArtifactError when `obj` holds what JSON cannot."""
    try:
        return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as err:
        raise InvalidArtifactError(f"{where}: not JSON-serializable ({err})") from err


def from_json(data: bytes, where: str) -> dict:
    """The JSON object stored at `where`; IntegrityError for anything else."""
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
    "schema": (int,),
    "task": (str,),
    "version": (int,),
    "blob_sha256": (str,),
    "shape": (list,),
    "dtype": (str,),
    "base_model": (str,),
    "base_model_fingerprint": (str,),
    "init": (str, type(None)),
    "prompt_length": (int,),
    "objective": (str, type(None)),
    "hyperparameters": (dict,),
    "dataset_version": (str, type(None)),
    "code_version": (str, type(None)),
    "metrics": (dict,),
    "label_words": (list,),
    "template": (str, type(None)),
    "metric": (str, type(None)),
    "created_at": (str,),
    "publish_id": (str,),
    "spec_sha256": (str, type(None)),
    "data_source": (dict,),
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
    # FrozenLM.fingerprint, "sha256:" + digest of the input-embedding matrix.
    base_model_fingerprint: str
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
    # Unique per publish() call, so a retried write of ours can be told from a rival's.
    publish_id: str = ""
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
                raise IntegrityError(
                    f"{where}: manifest field {f.name!r} has type {type(value).__name__}"
                )
        if raw.get("schema", SCHEMA) != SCHEMA:
            raise IntegrityError(
                f"{where}: manifest schema {raw['schema']} is not supported "
                f"(this code reads {SCHEMA})"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", raw["blob_sha256"]):
            raise IntegrityError(
                f"{where}: manifest field 'blob_sha256' is not a sha256 hex digest"
            )
        shape = raw["shape"]
        if len(shape) != 2 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise IntegrityError(
                f"{where}: manifest field 'shape' must be [P, E] with positive sizes, got {shape}"
            )
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
    # [{seq, version, previous, moved_at, move_id}, ...]
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict, where: str) -> AliasState:
        try:
            state = cls(**raw)
        except TypeError as err:
            raise IntegrityError(f"{where}: malformed alias record ({err})") from err
        history = state.history
        if (
            not isinstance(state.version, int)
            or not isinstance(history, list)
            or state.seq != len(history)
        ):
            entries = len(history) if isinstance(history, list) else "?"
            raise IntegrityError(
                f"{where}: malformed alias record (version {state.version!r}, "
                f"seq {state.seq!r}, {entries} history entries)"
            )
        return state


def moved_alias(current: AliasState | None, task: str, alias: str, version: int) -> AliasState:
    """The alias record after one more move, to `version`. `current` is the record now (None for
    a new alias); its history gains an entry under a fresh random move_id."""
    previous = current.version if current else None
    seq = (current.seq if current else 0) + 1
    moved_at = timestamp()
    entry = {"seq": seq, "version": version, "previous": previous, "moved_at": moved_at,
             "move_id": uuid.uuid4().hex}
    history = [*(current.history if current else []), entry]
    return AliasState(task, alias, version, previous, moved_at, seq, history)


# ---------------------------------------------------------------------------- the prompt blob
class PromptBlob(NamedTuple):
    """A prompt as stored: safetensors bytes, with the shape and dtype its manifest records."""

    data: bytes
    shape: list[int]  # [P, E]
    dtype: str  # e.g. "float32"


def serialize_prompt(task: str, prompt: torch.Tensor) -> PromptBlob:
    """The blob of a prompt [P, E]; InvalidArtifactError unless it is a finite float matrix."""
    from safetensors.torch import save

    if not isinstance(prompt, torch.Tensor):
        raise InvalidArtifactError(
            f"task {task}: the prompt must be a torch.Tensor, got {type(prompt).__name__}"
        )
    if prompt.dim() != 2 or 0 in prompt.shape:
        raise InvalidArtifactError(
            f"task {task}: the prompt must be [P, E] with P, E >= 1, "
            f"got shape {list(prompt.shape)}"
        )
    if not prompt.is_floating_point():
        raise InvalidArtifactError(
            f"task {task}: the prompt must be floating point, got {prompt.dtype}"
        )
    if not bool(torch.isfinite(prompt).all()):
        raise InvalidArtifactError(f"task {task}: the prompt holds NaN or infinite values")
    tensor = prompt.detach().cpu().contiguous()
    # No metadata, so identical prompts give identical bytes, hence one blob.
    dtype = str(tensor.dtype).removeprefix("torch.")
    return PromptBlob(save({PROMPT_KEY: tensor}), list(tensor.shape), dtype)


def deserialize_prompt(data: bytes, m: Manifest) -> torch.Tensor:
    """The prompt [P, E] in a blob, checked against its manifest's shape and dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    where = f"task {m.task} version {m.version} blob {m.blob_sha256[:12]}"
    try:
        tensors = load(data)
    except SafetensorError as err:
        raise IntegrityError(f"{where}: not a safetensors file ({err})") from err
    if set(tensors) != {PROMPT_KEY}:
        raise IntegrityError(
            f"{where}: expected one tensor {PROMPT_KEY!r}, found {sorted(tensors)}"
        )
    prompt = tensors[PROMPT_KEY]
    dtype = str(prompt.dtype).removeprefix("torch.")
    if list(prompt.shape) != m.shape or dtype != m.dtype:
        raise IntegrityError(
            f"{where}: tensor {list(prompt.shape)} {prompt.dtype} does not match "
            f"the manifest's {m.shape} {m.dtype}"
        )
    return prompt
