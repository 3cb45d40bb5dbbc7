"""A Python client of the inference service (`softprompt serve`, softprompt.serve).

    from softprompt.client import Client, InvalidInput

    with Client("http://127.0.0.1:8000") as client:  # the token from $SOFTPROMPT_TOKEN
        answer = client.classify("sst2", "a gripping, lovely film")
        print(answer.label, answer.scores)
        pair = {"premise": "A fox jumps.", "hypothesis": "An animal moves."}
        for result in client.classify_batch([("sst2", "dull"), ("rte", pair)]):
            print(result)  # a Prediction, or an ItemError for an item the service refused
        try:
            client.classify("rte", "one text")  # rte's template takes two fields
        except InvalidInput as err:
            print(err.detail)

A request the service cannot take now (503: a task without a verified prompt yet, a service
still loading) or a connection that fails is sent again after an exponential backoff with
jitter (or after the Retry-After the service asked for), up to `retries` more times; then
Unavailable is raised. A 4xx answer is never retried: Unauthorized (401, 403), NotFound (404),
InvalidInput (422) or ServiceError for the others, and so is a request that times out
(ServiceError with no status), as the service may still be working on it. A batch is one
request: the service answers each of its items (a Prediction) or refuses it (an ItemError) on
its own.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

TOKEN_ENV = "SOFTPROMPT_TOKEN"
# Transport failures worth another try: the connection never formed or broke before an answer.
# A read timeout is not among them, as the service may still be working on the request.
RETRIED_ERRORS = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


class ServiceError(Exception):
    """The service refused a request; `status` is None when it could not be reached at all."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status, self.detail = status, detail


class Unauthorized(ServiceError):
    """401 or 403: a missing or wrong bearer token."""


class NotFound(ServiceError):
    """404: an unknown task (or route)."""


class InvalidInput(ServiceError):
    """422: the request's input, as the detail names it."""


class Unavailable(ServiceError):
    """503 (or no connection) on every try: the service or the task is not ready."""


ERRORS = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 422: InvalidInput, 503: Unavailable}


def error_for(status: int | None, detail: str) -> ServiceError:
    """The typed error of a status."""
    return ERRORS.get(status, ServiceError)(status, detail)


@dataclass(frozen=True)
class Prediction:
    """One answered input: the winning label word and every label word's score."""

    task: str
    label: str
    scores: dict[str, float]  # log-likelihood per label word (ensemble: summed over N prompts)
    versions: tuple[int, ...]  # registry versions of the prompt(s) that answered
    prompt_sha256: tuple[str, ...]
    truncated: bool  # the input was cut to its last max_input_tokens tokens
    votes: dict[str, int] | None = None  # ensemble only: prompts voting for each label word

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Prediction:
        return cls(
            task=body["task"],
            label=body["label"],
            scores=dict(body["scores"]),
            versions=tuple(body["versions"]),
            prompt_sha256=tuple(body["prompt_sha256"]),
            truncated=body["truncated"],
            votes=body.get("votes"),
        )


@dataclass(frozen=True)
class ItemError:
    """A batch item the service refused, with the status it would have had on its own."""

    status: int
    detail: str

    def exception(self) -> ServiceError:
        """The error classify would have raised for this input."""
        return error_for(self.status, self.detail)


@dataclass(frozen=True)
class Readiness:
    """GET /readyz: `tasks` (served versions) and `errors` only for a client with the token."""

    ready: bool
    tasks: dict[str, list[int] | None] | None = None
    errors: dict[str, str] | None = None


def _detail(response: httpx.Response) -> str:
    """An error body's detail as one line: the service's text, or its validation errors."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase
    if isinstance(detail, list) and all(isinstance(error, dict) for error in detail):
        parts = []
        for error in detail:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg', '')}")
        return "; ".join(parts)
    return str(detail)


def retry_after(response: httpx.Response) -> float | None:
    """The seconds a Retry-After header asks for (delay seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _item(item: Mapping[str, Any] | tuple) -> dict:
    """A batch item as the service takes it, from {"task", "input"} or (task, input)."""
    if isinstance(item, Mapping):
        return dict(item)
    task, fields = item
    return {"task": task, "input": fields}


class Client:
    """The service's client: `classify`, `classify_batch`, `tasks`, `ready`, `reload`, `metrics`.

    `token` defaults to $SOFTPROMPT_TOKEN (no token when neither is set); `timeout` is seconds per
    try; `retries` is how many more tries a 503 or a failed connection gets, waiting `backoff`
    seconds and doubling (with jitter, at most `max_backoff`) unless the service sends
    Retry-After. Use it as a context manager, or call close().
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries, backoff and max_backoff must be >= 0")
        token = token or os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def classify(self, task: str, input: Mapping[str, Any] | str) -> Prediction:
        """One input of a task: its template's fields, or plain text for a one-field template."""
        body = self._call("POST", "/v1/classify", {"task": task, "input": input}).json()
        return Prediction.from_json(body)

    def classify_batch(
        self, items: Iterable[Mapping[str, Any] | tuple]
    ) -> list[Prediction | ItemError]:
        """Inputs of any tasks in one request, as (task, input) pairs or {"task", "input"}: a
        Prediction or an ItemError per item, in input order. InvalidInput when the batch itself
        is refused (empty, or more items than the service's max_batch_items)."""
        body = {"items": [_item(item) for item in items]}
        results = self._call("POST", "/v1/classify:batch", body).json()["results"]
        return [
            Prediction.from_json(r) if r["ok"] else ItemError(r["status"], r["detail"])
            for r in results
        ]

    def tasks(self) -> dict[str, dict]:
        """Every served task by name with its status, prompt versions, template and fields."""
        return self._call("GET", "/v1/tasks").json()

    def ready(self) -> Readiness:
        """Whether every task has a verified prompt. A service that answers "not ready" is not
        retried; one that cannot be reached is."""
        body = self._call("GET", "/readyz", not_ready_ok=True).json()
        return Readiness(body["ready"], body.get("tasks"), body.get("errors"))

    def reload(self) -> dict[str, dict]:
        """Re-read the registry now; per task its versions, whether they changed, any error."""
        return self._call("POST", "/v1/reload").json()

    def metrics(self) -> str:
        """The Prometheus metrics, as text."""
        return self._call("GET", "/metrics").text

    def _delay(self, tries: int, response: httpx.Response | None) -> float:
        """Seconds before the next try: the service's Retry-After, else exponential with jitter."""
        asked = retry_after(response) if response is not None else None
        if asked is not None:
            return asked
        return min(self.max_backoff, self.backoff * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)

    def _call(
        self, method: str, path: str, body: Any = None, not_ready_ok: bool = False
    ) -> httpx.Response:
        """Sends a request, trying again after a 503 or a failed connection; raises the typed
        error of any other answer that is not 2xx."""
        tries = 0
        while True:
            tries += 1
            response, failure = None, None
            try:
                response = self.http.request(method, path, json=body)
            except RETRIED_ERRORS as err:
                failure = err
            except httpx.TransportError as err:  # a timeout: the service may still be busy
                raise ServiceError(None, f"{method} {path}: {type(err).__name__}: {err}") from err
            if response is not None and response.status_code != 503:
                if response.is_success:
                    return response
                raise error_for(response.status_code, _detail(response))
            if response is not None and not_ready_ok:
                return response
            if tries > self.retries:
                if response is not None:
                    raise Unavailable(503, _detail(response))
                message = f"{method} {path}: no connection after {tries} tries: {failure}"
                raise Unavailable(None, message) from failure
            time.sleep(self._delay(tries, response))
