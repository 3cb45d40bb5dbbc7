"""What a classify request may carry: the request and response models, and the checks that turn
a request's fields into the task's rendered input (or an InputError that names the field).

An input is plain text (for a one-field template) or an object of the template's fields. A field
the template renders is a non-empty string or a finite number (rendered as its text, 3 -> "3").
An object is allowed only where the template reaches into it with a dotted field
(`{target.span1_text}`). Booleans, null, lists, unknown or missing fields are refused, naming the
field. Anywhere in a request, text that is not valid Unicode (a lone surrogate, which JSON's
"\\ud800" decodes to) and non-finite numbers (NaN, 1e999999) are refused too, since no tokenizer
or JSON encoder takes them.

A batch (POST /v1/classify:batch) holds up to `max_batch_items` such requests. Each item is
checked on its own (`check_item`), so a bad item is refused in its place in the answer while the
others are answered. The other routes' response models are here too, so the OpenAPI document
describes every answer.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from softprompt.serve.state import TaskState
from softprompt.task_data import render_input
from softprompt.tasks import TaskDataError

MAX_DEPTH = 8  # nesting of request objects; templates reach one or two levels deep


class InputError(ValueError):
    """A request input the service refuses (422); the message names the field."""


def json_text(value: object) -> str:
    """`value` as text that UTF-8 (hence JSON) can carry: lone surrogates become escapes."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def validation_detail(errors: list[dict]) -> list[dict]:
    """Pydantic's errors without the request's values: each error's type, location, message and
    context, as text. A NaN or a lone surrogate among the values could not be written as JSON."""
    detail = []
    for error in errors:
        item = {
            "type": json_text(error.get("type", "")),
            "loc": [p if isinstance(p, int) else json_text(p) for p in error.get("loc", ())],
            "msg": json_text(error.get("msg", "")),
        }
        if error.get("ctx"):
            item["ctx"] = {json_text(k): json_text(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return detail


def validation_text(errors: list[dict]) -> str:
    """Pydantic's errors as one line of text, each as `location: message`, without the values."""
    parts = []
    for error in validation_detail(errors):
        where = ".".join(str(p) for p in error["loc"]) or "item"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"{what} is not valid Unicode text (a lone surrogate at position {err.start})"
        ) from None


def check_json_value(value: Any, what: str) -> None:
    """InputError unless every key and string in a decoded JSON value is valid Unicode and every
    number is finite. Walks iteratively with a depth limit, so deep nesting cannot exhaust the
    stack. A key is checked before it enters a path, so a message never holds bad text."""
    stack = [(value, what, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"{path} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InputError(f"{path} is {item}; numbers must be finite")
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_text(key, f"a key of {path}")
                stack.append((sub, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(item))


def _kind(value: Any) -> str:
    """A JSON value's kind, as a request author knows it."""
    if value is None:
        return "null"
    kinds = {
        bool: "a boolean",
        list: "a list",
        dict: "an object",
        str: "a string",
        int: "a number",
        float: "a number",
    }
    return kinds.get(type(value), type(value).__name__)


def _scalar(value: Any, path: str) -> str:
    """A rendered field's value as its text: a non-empty string, or a finite number's text."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"input field {path!r} is empty")
        _check_text(value, f"input field {path!r}")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InputError(f"input field {path!r} is {value}; numbers must be finite")
        return str(value)
    raise InputError(f"input field {path!r} must be a string or a number, got {_kind(value)}")


def _fields(value: dict, prefix: str, rendered: list[str], where: str) -> dict:
    """The fields of one object level of a request (`prefix` is its dotted path plus "."),
    checked against the template's `rendered` names (in template order), with every rendered
    value as text."""
    below = (n[len(prefix) :].split(".")[0] for n in rendered if n.startswith(prefix))
    known = list(dict.fromkeys(below))
    unknown = [k for k in value if k not in known]
    if unknown:
        for key in unknown:
            _check_text(key, f"a field name of {where}")
        raise InputError(
            f"{where}: unknown input field(s) {[prefix + k for k in unknown]}; "
            f"it takes {[prefix + k for k in known]}"
        )
    missing = [prefix + k for k in known if k not in value]
    if missing:
        raise InputError(f"{where}: missing input field(s) {missing}")
    row = {}
    for key, sub in value.items():
        path = prefix + key
        if path in rendered:
            row[key] = _scalar(sub, path)
        elif isinstance(sub, dict):
            row[key] = _fields(sub, path + ".", rendered, where)
        else:
            raise InputError(
                f"input field {path!r} must be an object (the template reads "
                f"{[n for n in rendered if n.startswith(path + '.')]}), "
                f"got {_kind(sub)}"
            )
    return row


def _request_row(state: TaskState, fields: dict | str) -> dict:
    """The request's fields as one row of the task's data, each rendered value as text."""
    where = f"task {state.spec.name}"
    if isinstance(fields, dict):
        return _fields(fields, "", list(dict.fromkeys(state.spec.fields())), where)
    if not fields.strip():
        raise InputError("input text is empty")
    _check_text(fields, "input text")
    if len(state.input_fields) != 1:
        raise InputError(f"{where} needs an object with fields {state.input_fields}")
    # Plain text fills the one field verbatim.
    return {state.input_fields[0]: fields}


def render_request(state: TaskState, fields: dict | str, max_chars: int) -> str:
    """The task's template filled with the request's fields, validated (InputError names the
    field)."""
    line = json.dumps(_request_row(state, fields))
    try:
        text = render_input(state.spec, line, "request input")
    except TaskDataError as err:
        raise InputError(str(err)) from err
    if len(text) > max_chars:
        raise InputError(
            f"input is {len(text)} characters after templating; the limit is {max_chars}"
        )
    return text


class ClassifyRequest(BaseModel):
    """One input of one task."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(min_length=1, max_length=64, description="a served task")
    input: dict[str, Any] | str = Field(
        description="the task template's fields (an object of strings or numbers; nested "
        "objects where the template reads a dotted field), or plain text for a "
        "one-field template"
    )

    @field_validator("task", "input")
    @classmethod
    def _valid_json_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Lone surrogates and non-finite numbers are refused before anything else sees them."""
        try:
            check_json_value(value, info.field_name)
        except InputError as err:
            raise ValueError(str(err)) from None
        return value


class ClassifyResponse(BaseModel):
    """The winning label word and every label's score."""

    task: str
    label: str
    scores: dict[str, float] = Field(
        description="log-likelihood per label word (ensemble: summed over the N prompts)"
    )
    versions: list[int] = Field(description="registry versions of the prompt(s) that answered")
    prompt_sha256: list[str]
    truncated: bool = Field(description="the input was cut to its last max_input_tokens tokens")
    votes: dict[str, int] | None = Field(
        default=None, description="ensemble only: prompts voting for each label"
    )


def check_item(item: Any) -> ClassifyRequest | str:
    """One batch item as a ClassifyRequest, or the text of why it is refused (422)."""
    try:
        return ClassifyRequest.model_validate(item)
    except ValidationError as err:
        return validation_text(err.errors())


# A batch item is checked on its own (check_item), so the body's schema only documents it.
BatchItem = Annotated[Any, WithJsonSchema(ClassifyRequest.model_json_schema())]


class BatchRequest(BaseModel):
    """Inputs of any served tasks, answered together."""

    model_config = ConfigDict(extra="forbid", strict=True)
    items: list[BatchItem] = Field(
        min_length=1,
        description="classify requests of any served tasks (at most the service's "
        "max_batch_items); each is answered or refused on its own",
    )


class ItemAnswer(ClassifyResponse):
    """A batch item's answer: the fields of a classify response."""

    ok: Literal[True] = True


class ItemError(BaseModel):
    """A batch item the service refused, with the status it would have had on its own."""

    ok: Literal[False] = False
    status: int = Field(
        description="404 unknown task, 422 bad input, 503 no verified prompt yet, "
        "500 scoring failed"
    )
    detail: str


class BatchResponse(BaseModel):
    """One result per item, in input order."""

    results: list[Annotated[ItemAnswer | ItemError, Field(discriminator="ok")]]


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness, and for token holders each task's served versions and last error."""

    ready: bool = Field(description="the model is loaded and every task has a verified prompt")
    tasks: dict[str, list[int] | None] | None = Field(
        default=None, description="token holders only: served versions per task (null: none)"
    )
    errors: dict[str, str] | None = Field(
        default=None, description="token holders only: each task's last refused (re)load"
    )


class TaskView(BaseModel):
    """A served task: its status, and its prompts, template and label words while serving."""

    task: str
    status: Literal["serving", "unavailable", "error"]
    error: str | None = Field(
        default=None, description="why it cannot serve, or why its last reload was refused"
    )
    ref: str | int | None = Field(default=None, description="alias (null for an ensemble)")
    ensemble: int | None = Field(default=None, description="prompts voting (0: one prompt)")
    versions: list[int] | None = None
    prompt_sha256: list[str] | None = None
    label_words: list[str] | None = None
    template: str | None = None
    input_fields: list[str] | None = None


class ReloadOutcome(BaseModel):
    """What one task serves after a reload."""

    versions: list[int] = Field(description="the versions served now (empty: none)")
    changed: bool = Field(description="a new prompt was swapped in")
    error: str | None = Field(default=None, description="why the registry's prompt was refused")
