"""What a classify request may carry: the request and response models, and the checks that turn
a request's fields into the task's rendered input (or an InputError that names the field)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from softprompt.serve.state import TaskState
from softprompt.task_data import render_input
from softprompt.tasks import TaskDataError


class InputError(ValueError):
    """A request input the service refuses (422); the message names the field."""


def _check_leaves(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _check_leaves(sub, f"{path}.{key}" if path else str(key))
    elif not isinstance(value, str):
        raise InputError(f"input field {path!r} must be a string, got {type(value).__name__}")
    elif not value.strip():
        raise InputError(f"input field {path!r} is empty")


def _request_line(state: TaskState, fields: dict | str) -> str:
    """The request's fields as one JSON line of the task's data format."""
    if isinstance(fields, dict):
        unknown = sorted(set(fields) - set(state.input_fields))
        if unknown:
            raise InputError(f"task {state.spec.name}: unknown input field(s) {unknown}; "
                             f"it takes {state.input_fields}")
        _check_leaves(fields, "")
        return json.dumps(fields)
    if not fields.strip():
        raise InputError("input text is empty")
    if len(state.input_fields) != 1:
        raise InputError(
            f"task {state.spec.name} needs an object with fields {state.input_fields}"
        )
    # Plain text fills the one field verbatim.
    return json.dumps({state.input_fields[0]: fields})


def render_request(state: TaskState, fields: dict | str, max_chars: int) -> str:
    """The task's template filled with the request's fields, validated (InputError names the
    field)."""
    line = _request_line(state, fields)
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
        description="the task template's fields (an object), or plain text for a one-field "
                    "template"
    )


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
