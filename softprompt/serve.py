"""The multi-task inference service: one frozen LM, every task's prompt pulled from the registry.

The paper's economic argument made concrete: the base model is loaded once; each served task costs
only its [P, E] prompt. Requests of any task go into one queue; a micro-batcher drains it for up to
`max_wait_ms` or `max_batch_size` rows and scores the whole batch in one worker call
(`softprompt.scoring.mixed_label_scores`: on a GPU one forward with per-example prompts
[B, P, E]; on CPU one forward per prompt, each running its prefix once). An ensemble task contributes N rows
per request, one per prompt, and its answer is the majority vote (`softprompt.ensemble.majority_vote`).

Prompts come from the registry by task and alias (or the N newest / N pinned versions for an
ensemble). `pull` verifies each blob's sha256 and the base-model fingerprint; a prompt that fails
is never served: the task keeps its previous prompt (or answers 503 if it never had one). A
poller (and POST /v1/reload) picks up moved aliases without a restart.

Endpoints: POST /v1/classify, GET /v1/tasks, POST /v1/reload, GET /metrics (Prometheus),
GET /healthz (liveness), GET /readyz (model loaded, every task has a verified prompt); the OpenAPI
schema at /openapi.json. With a token configured, every request but /healthz and /readyz needs
`Authorization: Bearer <token>` (compared in constant time). Request bodies over
`max_body_bytes` are refused (413) before any parsing. With `metrics_port` set, the same metrics
are also served without the token on a listener of their own, for a scraper that holds no token
(Prometheus pod annotations); /metrics on the main port keeps requiring it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from softprompt.ensemble import majority_vote
from softprompt.model import DEFAULT_MODEL, FrozenLM
from softprompt.scoring import mixed_label_scores
from softprompt.tasks import TaskDataError, TaskSpec, render_input

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")  # reachable without the token (probes carry no secrets)


# ------------------------------------------------------------------ configuration
@dataclass
class TaskServing:
    """How one task is served: one prompt by alias (or version), or an ensemble of N prompts."""

    task: str = field(metadata={"help": "Registered task name."})
    ref: str = field(default="production", metadata={"help": "Alias (or version number) of the single prompt."})
    ensemble: int = field(default=0, metadata={"help": "Serve the N newest versions as a majority-vote ensemble (0: off)."})
    versions: tuple[int, ...] = field(default=(), metadata={"help": "Pinned ensemble versions (instead of the N newest)."})

    def __post_init__(self) -> None:
        self.versions = tuple(int(v) for v in self.versions)
        if not self.task:
            raise ValueError("TaskServing.task must be a task name")
        if self.ensemble < 0 or self.ensemble == 1:
            raise ValueError(f"task {self.task}: ensemble must be 0 (off) or >= 2 prompts, got {self.ensemble}")
        if self.versions and (self.ensemble or len(self.versions) < 2):
            raise ValueError(f"task {self.task}: pin >= 2 ensemble versions, or set ensemble=N, not both")
        if any(v < 1 for v in self.versions):
            raise ValueError(f"task {self.task}: pinned versions must be >= 1, got {list(self.versions)}")

    @property
    def is_ensemble(self) -> bool:
        return bool(self.ensemble or self.versions)


@dataclass
class ServeConfig:
    """The inference service's settings (see `softprompt serve --help`)."""

    registry: str = field(metadata={"help": "Registry URI (directory, file:// or s3://); read with read-only credentials."})
    tasks: list[TaskServing] = field(metadata={"help": "The served tasks."})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Frozen base model (as load_frozen_lm takes it)."})
    token: str | None = field(default=None, repr=False, metadata={"help": "Bearer token every non-health request needs (None: open)."})
    max_batch_size: int = field(default=32, metadata={"help": "Rows per forward (an ensemble request is N rows)."})
    max_wait_ms: float = field(default=10.0, metadata={"help": "How long a batch waits for more requests once one arrived."})
    mixed_batches: bool = field(default=True, metadata={"help": "Batch tasks together (one queue, one worker call per batch); False runs one call per task (the baseline)."})
    max_body_bytes: int = field(default=64 * 1024, metadata={"help": "Larger request bodies are refused (413) before parsing."})
    max_input_chars: int = field(default=8000, metadata={"help": "Longer rendered inputs are refused (422)."})
    max_input_tokens: int = field(default=256, metadata={"help": "Longer inputs keep their last tokens, as in training."})
    poll_seconds: float = field(default=30.0, metadata={"help": "Registry poll period for moved aliases (0: only POST /v1/reload)."})
    metrics_port: int = field(default=0, metadata={
        "help": "Port of a second listener serving the metrics without the token (0: off)."})
    metrics_host: str = field(default="127.0.0.1", metadata={
        "help": "Address the metrics listener binds."})

    def __post_init__(self) -> None:
        names = [t.task for t in self.tasks]
        if not names:
            raise ValueError("ServeConfig.tasks: serve at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"ServeConfig.tasks: a task is listed twice: {names}")
        for name in ("max_batch_size", "max_body_bytes", "max_input_chars", "max_input_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.poll_seconds < 0:
            raise ValueError("ServeConfig.max_wait_ms and poll_seconds must be >= 0")
        if self.token is not None and not self.token:
            raise ValueError("ServeConfig.token is empty; use None for an open service")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"ServeConfig.metrics_port must be 0 (off) or a TCP port, "
                             f"got {self.metrics_port}")


# ------------------------------------------------------------------ served tasks
class ReadOnlyRegistry:
    """The service's view of the registry: the read methods only, so no code path of the service
    can publish or move an alias (its credentials should be read-only as well)."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def manifest(self, task: str, ref: int | str):
        return self._registry.manifest(task, ref)

    def list_versions(self, task: str) -> list:
        return self._registry.list_versions(task)

    def pull(self, task: str, ref: int | str = "production", expected_fingerprint: str | None = None):
        return self._registry.pull(task, ref, expected_fingerprint=expected_fingerprint)


@dataclass(frozen=True)
class TaskState:
    """A served task's verified prompts, immutable: a reload swaps in a new one."""

    serving: TaskServing
    manifests: tuple  # the registry Manifests, one per prompt
    prompts: tuple[torch.Tensor, ...]  # N x [P, E]
    spec: TaskSpec  # template and label words from the manifest (no task spec files needed)

    @property
    def versions(self) -> list[int]:
        return [int(m.version) for m in self.manifests]

    @property
    def input_fields(self) -> list[str]:
        return list(dict.fromkeys(f.split(".")[0] for f in self.spec.fields()))

    def describe(self) -> dict:
        return {
            "task": self.spec.name, "ref": None if self.serving.is_ensemble else self.serving.ref,
            "ensemble": len(self.prompts) if self.serving.is_ensemble else 0, "versions": self.versions,
            "prompt_sha256": [m.blob_sha256 for m in self.manifests], "label_words": self.spec.label_words,
            "template": self.spec.template, "input_fields": self.input_fields,
        }


def _spec_from_manifest(m) -> TaskSpec:
    return TaskSpec(name=m.task, format="jsonl", splits={}, template=m.template, label_field="label",
                    labels={w: w for w in m.label_words})


def load_task_state(registry, serving: TaskServing, lm: FrozenLM) -> TaskState:
    """Resolves a task's alias / versions and pulls its prompts, verified against `lm`.

    Raises (RegistryError, ValueError) instead of returning anything unverified.
    """
    if serving.versions:
        refs = list(serving.versions)
    elif serving.ensemble:
        versions = sorted(int(m.version) for m in registry.list_versions(serving.task))
        if len(versions) < serving.ensemble:
            raise ValueError(f"task {serving.task}: ensemble of {serving.ensemble} needs as many versions; registry has {versions}")
        refs = versions[-serving.ensemble:]
    else:
        refs = [serving.ref]
    manifests, prompts = [], []
    for ref in refs:
        prompt, m = registry.pull(serving.task, ref, expected_fingerprint=lm.fingerprint)
        # pull checks both; a second look costs nothing and guards a backend that forgets to.
        if m.base_model_fingerprint != lm.fingerprint:
            raise ValueError(f"task {serving.task} v{m.version}: prompt was trained on another base model")
        if prompt.dim() != 2 or prompt.shape[1] != lm.dim:
            raise ValueError(f"task {serving.task} v{m.version}: prompt shape {list(prompt.shape)} does not fit model width {lm.dim}")
        manifests.append(m)
        prompts.append(prompt.float().to(lm.device))
    spec = _spec_from_manifest(manifests[0])
    for m in manifests[1:]:
        if list(m.label_words) != spec.label_words or m.template != spec.template:
            raise ValueError(f"task {serving.task}: ensemble versions {refs} disagree on template or label words")
    return TaskState(serving, tuple(manifests), tuple(prompts), spec)


def _resolve_versions(registry, serving: TaskServing) -> list[int]:
    """The versions a task should serve now (a cheap manifest read, no blob)."""
    if serving.versions:
        return list(serving.versions)
    if serving.ensemble:
        return sorted(int(m.version) for m in registry.list_versions(serving.task))[-serving.ensemble:]
    return [int(registry.manifest(serving.task, serving.ref).version)]


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


def render_request(state: TaskState, fields: dict | str, max_chars: int) -> str:
    """The task's template filled with the request's fields, validated (InputError names the field)."""
    if isinstance(fields, dict):
        unknown = sorted(set(fields) - set(state.input_fields))
        if unknown:
            raise InputError(f"task {state.spec.name}: unknown input field(s) {unknown}; it takes {state.input_fields}")
        _check_leaves(fields, "")
        line = json.dumps(fields)
    else:
        if not fields.strip():
            raise InputError("input text is empty")
        if len(state.input_fields) != 1:
            raise InputError(f"task {state.spec.name} needs an object with fields {state.input_fields}")
        line = json.dumps({state.input_fields[0]: fields})  # plain text fills the one field verbatim
    try:
        text = render_input(state.spec, line, "request input")
    except TaskDataError as err:
        raise InputError(str(err)) from err
    if len(text) > max_chars:
        raise InputError(f"input is {len(text)} characters after templating; the limit is {max_chars}")
    return text


# ------------------------------------------------------------------ metrics
class Metrics:
    """Prometheus metrics on a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("softprompt_http_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("softprompt_classify_latency_seconds", "Classify latency, queueing included", ["task"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.predictions = Counter("softprompt_predictions", "Answered classify requests", ["task"], registry=r)
        self.batch_rows = Histogram("softprompt_batch_rows", "Rows per forward", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.batch_tasks = Histogram("softprompt_batch_tasks", "Distinct tasks per forward", registry=r, buckets=(1, 2, 3, 4, 6, 8, 16))
        self.errors = Counter("softprompt_errors", "Errors by kind", ["kind"], registry=r)
        self.reloads = Counter("softprompt_prompt_reloads", "Prompt (re)loads by outcome", ["task", "outcome"], registry=r)
        self.version = Gauge("softprompt_prompt_version", "Served prompt version (newest for ensembles)", ["task"], registry=r)


# ------------------------------------------------------------------ micro-batcher
@dataclass
class _Pending:
    state: TaskState
    text: str
    future: asyncio.Future

    @property
    def rows(self) -> int:
        return len(self.state.prompts)


class MicroBatcher:
    """Collects requests of any task for up to `max_wait_ms` / `max_batch_size` rows, then runs one
    forward per batch in a single worker thread (the event loop stays free to accept requests)."""

    def __init__(self, lm: FrozenLM, config: ServeConfig, metrics: Metrics) -> None:
        self.lm, self.config, self.metrics = lm, config, metrics
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="softprompt-model")
        self._held: _Pending | None = None  # a request that did not fit the last batch

    async def submit(self, state: TaskState, text: str) -> tuple[torch.Tensor, bool]:
        """Queues one input; resolves to its [N, L] scores (N = 1 unless an ensemble) and whether
        the input was truncated."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(state, text, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._held or await self.queue.get()
        self._held = None
        batch, rows = [first], first.rows
        deadline = loop.time() + self.config.max_wait_ms / 1000
        while rows < self.config.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + item.rows > self.config.max_batch_size:
                self._held = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _score(self, batch: list[_Pending]) -> list[tuple[torch.Tensor, bool]]:
        """Worker thread: tokenizes (the tokenizer is used by this thread only: fast tokenizers
        are not safe to share across threads) and scores the batch (mixed_label_scores) ->
        ([N_i, L_i] scores, truncated) per request."""
        prompts, inputs, words, owner, truncated = [], [], [], [], []
        for k, item in enumerate(batch):
            ids, cut = self.lm.encode_input(item.text, self.config.max_input_tokens)
            truncated.append(cut)
            for prompt in item.state.prompts:
                prompts.append(prompt)
                inputs.append(ids)
                words.append(item.state.spec.label_words)
                owner.append(k)
        rows = mixed_label_scores(self.lm, prompts, inputs, words)
        self.metrics.batch_rows.observe(len(rows))
        self.metrics.batch_tasks.observe(len({item.state.spec.name for item in batch}))
        return [(torch.stack([r for r, o in zip(rows, owner, strict=True) if o == k]), truncated[k]) for k in range(len(batch))]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if self.config.mixed_batches:
                groups = [batch]
            else:
                by_task: dict[str, list[_Pending]] = {}
                for item in batch:
                    by_task.setdefault(item.state.spec.name, []).append(item)
                groups = list(by_task.values())
            for group in groups:
                try:
                    results = await loop.run_in_executor(self.executor, self._score, group)
                except Exception as err:  # one bad batch fails its requests, never the server
                    log.exception("batch of %d requests failed", len(group))
                    self.metrics.errors.labels("batch").inc()
                    for item in group:
                        if not item.future.done():
                            item.future.set_exception(RuntimeError(f"scoring failed: {type(err).__name__}: {err}"))
                    continue
                for item, scores in zip(group, results, strict=True):
                    if not item.future.done():  # the client may have gone away
                        item.future.set_result(scores)


# ------------------------------------------------------------------ the service
class Service:
    """Owns the model, the served tasks' states, the batcher and the registry poller."""

    def __init__(self, config: ServeConfig, lm: FrozenLM | None = None, registry=None) -> None:
        self.config, self.lm = config, lm
        self.registry = ReadOnlyRegistry(registry) if registry is not None else None
        self.metrics = Metrics()
        self.states: dict[str, TaskState] = {}
        self.last_error: dict[str, str] = {}
        self.batcher: MicroBatcher | None = None
        self._tasks: list[asyncio.Task] = []
        self._reload_lock = asyncio.Lock()
        self._metrics_listener = None  # (server, thread) of the token-free metrics port, when on

    @property
    def ready(self) -> bool:
        return self.batcher is not None and all(t.task in self.states for t in self.config.tasks)

    async def start(self) -> None:
        if self.registry is None:
            from softprompt.registry import open_registry

            self.registry = ReadOnlyRegistry(open_registry(self.config.registry))
        if self.lm is None:
            from softprompt.model import load_frozen_lm

            self.lm = await asyncio.to_thread(load_frozen_lm, self.config.model)
        await self.reload()
        self.batcher = MicroBatcher(self.lm, self.config, self.metrics)
        self._tasks.append(asyncio.create_task(self.batcher.run(), name="softprompt-batcher"))
        if self.config.poll_seconds:
            self._tasks.append(asyncio.create_task(self._poll(), name="softprompt-poller"))
        if self.config.metrics_port:
            # Last, so that a failed start leaves no listener behind; stop() closes it.
            from prometheus_client import start_http_server

            host, port = self.config.metrics_host, self.config.metrics_port
            registry = self.metrics.registry
            self._metrics_listener = start_http_server(port, addr=host, registry=registry)
            log.info("metrics without the token on %s:%d", host, port)

    async def stop(self) -> None:
        if self._metrics_listener is not None:
            server, thread = self._metrics_listener
            self._metrics_listener = None
            await asyncio.to_thread(server.shutdown)  # waits for serve_forever to return
            server.server_close()
            thread.join(timeout=10)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.batcher is not None:
            self.batcher.executor.shutdown(wait=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            await self.reload()

    async def reload(self) -> dict[str, dict]:
        """Swaps in the prompts that the aliases point at now, if they verify; keeps the old ones otherwise."""
        async with self._reload_lock:
            report = {}
            for serving in self.config.tasks:
                name, current = serving.task, self.states.get(serving.task)
                try:
                    wanted = await asyncio.to_thread(_resolve_versions, self.registry, serving)
                    if current is not None and wanted == current.versions:
                        report[name] = {"versions": wanted, "changed": False}
                        continue
                    state = await asyncio.to_thread(load_task_state, self.registry, serving, self.lm)
                except Exception as err:  # unverifiable or unreachable: keep serving what was verified
                    self.last_error[name] = f"{type(err).__name__}: {err}"
                    self.metrics.reloads.labels(name, "rejected").inc()
                    log.error("task %s: not (re)loaded, still serving %s: %s", name,
                              current.versions if current else "nothing", err)
                    report[name] = {"versions": current.versions if current else [], "changed": False, "error": self.last_error[name]}
                    continue
                self.states[name] = state
                self.last_error.pop(name, None)
                self.metrics.reloads.labels(name, "loaded").inc()
                self.metrics.version.labels(name).set(max(state.versions))
                log.info("task %s: serving versions %s", name, state.versions)
                report[name] = {"versions": state.versions, "changed": True}
            return report

    async def classify(self, task: str, fields: dict | str) -> dict:
        if task not in {t.task for t in self.config.tasks}:
            raise HTTPException(404, f"unknown task {task!r}; this service serves {sorted(t.task for t in self.config.tasks)}")
        state = self.states.get(task)
        if state is None or self.batcher is None:
            raise HTTPException(503, f"task {task!r} has no verified prompt yet: {self.last_error.get(task, 'loading')}")
        try:
            text = render_request(state, fields, self.config.max_input_chars)
        except InputError as err:
            self.metrics.errors.labels("bad_input").inc()
            raise HTTPException(422, str(err)) from err
        start = time.perf_counter()
        scores, truncated = await self.batcher.submit(state, text)  # [N, L]
        self.metrics.latency.labels(task).observe(time.perf_counter() - start)
        self.metrics.predictions.labels(task).inc()
        words = state.spec.label_words
        if len(state.prompts) > 1:
            winner = int(majority_vote(scores[:, None, :])[0][0])
            votes = torch.bincount(scores.argmax(1), minlength=len(words)).tolist()
            extra = {"votes": dict(zip(words, votes, strict=True))}
            summed = scores.sum(0)
        else:
            winner, extra, summed = int(scores[0].argmax()), {}, scores[0]
        return {
            "task": task, "label": words[winner], "scores": dict(zip(words, [round(float(s), 6) for s in summed], strict=True)),
            "versions": state.versions, "prompt_sha256": [m.blob_sha256 for m in state.manifests],
            "truncated": truncated, **extra,
        }


# ------------------------------------------------------------------ HTTP layer
class ClassifyRequest(BaseModel):
    """One input of one task."""

    model_config = ConfigDict(extra="forbid", strict=True)
    task: str = Field(min_length=1, max_length=64, description="a served task")
    input: dict[str, Any] | str = Field(description="the task template's fields (an object), or plain text for a one-field template")


class ClassifyResponse(BaseModel):
    """The winning label word and every label's score."""

    task: str
    label: str
    scores: dict[str, float] = Field(description="log-likelihood per label word (ensemble: summed over the N prompts)")
    versions: list[int] = Field(description="registry versions of the prompt(s) that answered")
    prompt_sha256: list[str]
    truncated: bool = Field(description="the input was cut to its last max_input_tokens tokens")
    votes: dict[str, int] | None = Field(default=None, description="ensemble only: prompts voting for each label")


class _Guard:
    """ASGI middleware in front of everything: bearer token (constant-time compare), body size
    limit (checked while reading, before any parsing), and per-route request counts."""

    def __init__(self, app, service: Service, routes: set[str]) -> None:
        self.app, self.service, self.routes = app, service, routes
        self.token = service.config.token.encode() if service.config.token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics = self.service.metrics
        route = scope["path"] if scope["path"] in self.routes else "other"  # bounded label values
        status_seen = []

        async def counted_send(message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        if self.token is not None and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                metrics.errors.labels("unauthorized").inc()
                return await _plain(counted_send, 401, "missing or wrong bearer token", {b"www-authenticate": b"Bearer"})

        limit = self.service.config.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            metrics.errors.labels("body_too_large").inc()
            return await _plain(counted_send, 413, f"request body over the {limit}-byte limit")
        body, more = b"", True
        while more:  # read it all (bounded) before the app parses anything
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                metrics.errors.labels("body_too_large").inc()
                return await _plain(counted_send, 413, f"request body over the {limit}-byte limit")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, counted_send)
        except Exception:  # the app's own 500 handler has answered; keep the server up
            log.exception("request %s failed", scope["path"])
            if not status_seen:
                await _plain(counted_send, 500, "internal error")


async def _plain(send, status: int, detail: str, headers: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += list((headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def create_app(config: ServeConfig, lm: FrozenLM | None = None, registry=None):
    """The FastAPI app. `lm` / `registry` may be passed in (tests, benchmarks); otherwise the model
    is loaded once at startup and the registry opened from `config.registry`. The service only
    reads the registry: manifest, list_versions and pull."""
    service = Service(config, lm, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="softprompt inference", version="1", lifespan=lifespan,
                  description="One frozen LM serving every registered task's soft prompt; mixed-task micro-batches.")
    app.state.service = service

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        service.metrics.errors.labels("internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: model loaded and every task has a verified prompt")
    async def readyz():
        body = {"ready": service.ready, "tasks": {t.task: service.states[t.task].versions if t.task in service.states else None
                                                  for t in config.tasks}, "errors": service.last_error}
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.post("/v1/classify", response_model=ClassifyResponse, response_model_exclude_none=True,
              summary="rank-classify one input of any served task")
    async def classify(req: ClassifyRequest):
        try:
            return await service.classify(req.task, req.input)
        except HTTPException:
            raise
        except RuntimeError as err:
            raise HTTPException(500, str(err)) from err

    @app.get("/v1/tasks", summary="the served tasks, their prompt versions and input fields")
    async def tasks():
        return {name: state.describe() for name, state in service.states.items()}

    @app.post("/v1/reload", summary="re-read the registry now; moved aliases are picked up if they verify")
    async def reload():
        return await service.reload()

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = {r.path for r in app.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(_Guard, service=service, routes=routes)
    return app


class ServerThread:
    """Runs the app under uvicorn in a background thread on an already-bound socket (port 0 picks
    a free one): for tests and benchmarks. Use as a context manager; `url` is the base URL."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
