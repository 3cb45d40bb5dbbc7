"""What the registry stores, where, and how it is checked on the way in and out.

Three records, each under a key derived from validated names only:

    blobs/sha256/<hex>                          the prompt tensor as safetensors (key "prompt")
    prompts/<task>/<version>/manifest.json      a Manifest, one per version
    prompts/<task>/aliases/<alias>.json         an AliasState, a movable pointer with its history

Names: tasks match `[a-z0-9][a-z0-9_-]{0,63}` (as task specs do); aliases `[a-z][a-z0-9_-]{0,63}`
(a leading letter keeps them apart from version numbers); versions are written in ASCII decimal
without leading zeros (`[1-9][0-9]*`). Nothing else can reach a storage key, so no name can
traverse paths, and a stored name in any other form is not a version.

One validator, `check_manifest`, decides whether a manifest is usable, at publish (before anything
is stored) and at every read. It checks, besides each field's JSON type (`Manifest.from_dict`):
the task name and version number; a non-empty base model; a fingerprint of the form
sha256:<64 hex digits>; a float dtype; a shape [P, E] whose P equals `prompt_length`; a template
that names only plain fields; and at least two distinct, non-empty label words (the rules of
softprompt.verbalizer).

Reading is strict. A manifest that fails the validator, an alias record whose history does not
add up (seqs 1..n in order, each move starting where the one before ended, the current version
and previous one those of the last move), or a blob whose tensor differs from its manifest raises
IntegrityError naming the stored object. JSON is written with sorted keys and without NaN, so
equal records are equal bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import NamedTuple

import torch

from softprompt.prompt import PROMPT_KEY  # the tensor's name inside a prompt blob
from softprompt.registry.errors import IntegrityError, InvalidArtifactError, InvalidNameError
from softprompt.verbalizer import VerbalizerError, check_label_words, template_fields

SCHEMA = 1
TASK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ALIAS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# A version as written in keys and refs: ASCII decimal, no leading zero, below 10**18.
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
MAX_VERSION = 10**18 - 1
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The dtypes a prompt may be stored in: every service can compute with them.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


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


def parse_ref(ref: object) -> int | str:
    """A version number or an alias name; InvalidNameError for anything else.

    A version is an int from 1 or its ASCII decimal string. "01" is refused rather than read as
    1, since no stored version is named so (see VERSION_NAME)."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        if not 1 <= ref <= MAX_VERSION:
            raise InvalidNameError(f"invalid version {ref!r}: versions are 1, 2, 3, ...")
        return ref
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid reference {ref!r}: a version number or an alias name")
    if re.fullmatch(r"[0-9]+", ref):
        if not VERSION_NAME.fullmatch(ref):
            raise InvalidNameError(
                f"invalid version {ref!r}: versions are 1, 2, 3, ... written without leading "
                "zeros, below 10**18"
            )
        return int(ref)
    try:
        return check_alias(ref)
    except InvalidNameError as err:
        raise InvalidNameError(
            f"invalid reference {ref!r}: neither a version number (ASCII digits) nor an alias "
            f"name ({err})"
        ) from None


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
    except (TypeError, ValueError, RecursionError) as err:
        raise InvalidArtifactError(f"{where}: not JSON-serializable ({err})") from err


def from_json(data: bytes, where: str) -> dict:
    """The JSON object stored at `where`; IntegrityError for anything else."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise IntegrityError(f"{where}: malformed JSON ({err})") from err
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------------------- records
# Manifest field -> accepted JSON types (None allowed where listed).
_STR, _OPTIONAL_STR = (str,), (str, type(None))
_TYPES: dict[str, tuple] = {
    "schema": (int,), "task": _STR, "version": (int,), "blob_sha256": _STR, "shape": (list,),
    "dtype": _STR, "base_model": _STR, "base_model_fingerprint": _STR, "init": _OPTIONAL_STR,
    "prompt_length": (int,), "objective": _OPTIONAL_STR, "hyperparameters": (dict,),
    "dataset_version": _OPTIONAL_STR, "code_version": _OPTIONAL_STR, "metrics": (dict,),
    "label_words": (list,), "template": _OPTIONAL_STR, "metric": _OPTIONAL_STR,
    "created_at": _STR, "publish_id": _STR, "spec_sha256": _OPTIONAL_STR, "data_source": (dict,),
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
        if not SHA256_HEX.fullmatch(raw["blob_sha256"]):
            raise IntegrityError(
                f"{where}: manifest field 'blob_sha256' is not a sha256 hex digest"
            )
        shape = raw["shape"]
        if len(shape) != 2 or not all(_is_count(d) for d in shape):
            raise IntegrityError(
                f"{where}: manifest field 'shape' must be [P, E] with positive sizes, got {shape}"
            )
        return cls(**raw)


def _is_count(value: object, most: int | None = None) -> bool:
    """Whether `value` is an int from 1 (and at most `most`), not a bool."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return ok and (most is None or value <= most)


def _short(value: object) -> str:
    """`value`'s repr, cut to 80 characters, for an error message about a stored field."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_manifest(m: Manifest, where: str) -> Manifest:
    """`m` when a service can use it, else IntegrityError naming `where` and the field.

    The rules are listed in the module docstring; publish turns the error into an
    InvalidArtifactError before anything is stored."""

    def bad(name: str, why: str) -> IntegrityError:
        return IntegrityError(f"{where}: manifest field {name!r} {why}")

    if not TASK_NAME.fullmatch(m.task):
        raise bad("task", f"{_short(m.task)} is not a task name")
    if not 1 <= m.version <= MAX_VERSION:
        raise bad("version", f"{m.version} is not a version number (1, 2, 3, ...)")
    if not m.base_model.strip():
        raise bad("base_model", "is required (a non-empty string)")
    if not FINGERPRINT.fullmatch(m.base_model_fingerprint):
        raise bad("base_model_fingerprint",
                  f"{_short(m.base_model_fingerprint)} is not sha256:<64 hex digits>")
    if m.dtype not in FLOAT_DTYPES:
        raise bad("dtype", f"{_short(m.dtype)} is not one of {list(FLOAT_DTYPES)}")
    if m.shape[0] != m.prompt_length:
        raise bad("prompt_length", f"{m.prompt_length} disagrees with 'shape' {m.shape}")
    try:
        template_fields(m.template, "manifest field 'template'")
        check_label_words(m.label_words, "manifest field 'label_words'")
    except VerbalizerError as err:
        raise IntegrityError(f"{where}: {err}") from err
    return m


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
        """Validates an alias record read from `where`: its history must add up."""
        try:
            state = cls(**raw)
        except TypeError as err:
            raise IntegrityError(f"{where}: malformed alias record ({err})") from err
        history = state.history
        if (
            not _is_count(state.version, MAX_VERSION)
            or not isinstance(history, list)
            or state.seq != len(history)
        ):
            entries = len(history) if isinstance(history, list) else "?"
            raise IntegrityError(
                f"{where}: malformed alias record (version {state.version!r}, "
                f"seq {state.seq!r}, {entries} history entries)"
            )
        _check_history(state, where)
        return state


def _check_history(state: AliasState, where: str) -> None:
    """IntegrityError unless the history is moves 1..n, each starting where the one before
    ended, and the record's version and previous are those of the last move."""
    if not state.history:
        raise IntegrityError(f"{where}: alias record with an empty history")
    previous = None
    for n, entry in enumerate(state.history, start=1):
        if (
            not isinstance(entry, dict)
            or entry.get("seq") != n
            or not _is_count(entry.get("version"), MAX_VERSION)
            or entry.get("previous") != previous
        ):
            raise IntegrityError(
                f"{where}: alias history entry {n} {_short(entry)} does not follow the one "
                f"before (expected seq {n}, previous {previous})"
            )
        previous = entry["version"]
    last = state.history[-1]
    if (state.version, state.previous) != (last["version"], last["previous"]):
        raise IntegrityError(
            f"{where}: alias points to version {state.version!r} (previous "
            f"{state.previous!r}), but its last move went to {last['version']} (previous "
            f"{last['previous']})"
        )


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
    """A prompt as stored: safetensors bytes, with the digest, shape and dtype its manifest
    records."""

    data: bytes
    shape: list[int]  # [P, E]
    dtype: str  # e.g. "float32"
    sha256: str  # hex digest of `data`, the blob's name


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
    if str(prompt.dtype).removeprefix("torch.") not in FLOAT_DTYPES:
        raise InvalidArtifactError(
            f"task {task}: the prompt must be floating point ({', '.join(FLOAT_DTYPES)}), "
            f"got {prompt.dtype}"
        )
    if not bool(torch.isfinite(prompt).all()):
        raise InvalidArtifactError(f"task {task}: the prompt holds NaN or infinite values")
    tensor = prompt.detach().cpu().contiguous()
    # No metadata, so identical prompts give identical bytes, hence one blob.
    dtype = str(tensor.dtype).removeprefix("torch.")
    data = save({PROMPT_KEY: tensor})
    return PromptBlob(data, list(tensor.shape), dtype, hashlib.sha256(data).hexdigest())


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
