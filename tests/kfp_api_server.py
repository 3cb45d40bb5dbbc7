"""A stand-in for the Kubeflow Pipelines API server (REST, v2beta1), for tests of `kfp.Client`.

An in-memory HTTP server on 127.0.0.1 (a free port) that answers the endpoints `kfp.Client`
(kfp 2.17) calls to submit and follow runs, with JSON shaped as the real server sends it (the
field names kfp_server_api's models read):

    GET  /apis/v2beta1/healthz                   {"multi_user", "pipeline_store"}
    POST /apis/v2beta1/experiments               create (409 if the name exists in the namespace)
    GET  /apis/v2beta1/experiments               list: namespace, filter, sort_by, page_size/token
    GET  /apis/v2beta1/experiments/{id}          get
    POST /apis/v2beta1/runs                      create from an inline pipeline_spec
    GET  /apis/v2beta1/runs                      list: experiment_id or namespace, filter, ...
    GET  /apis/v2beta1/runs/{id}                 get (advances the run's scripted state)

Behaviour copied from the real server: a bearer token, when the server has one, is required on
every request, healthz included (else 401 with gRPC code 16, Unauthenticated, as the API server
answers a token it cannot authenticate); multi-user mode (the default) requires a namespace on
experiments and on run listings without an experiment (400, code 3), single-user mode drops
namespaces (stores ""); a run without a service account gets the deployment's default
("default-editor" multi-user, "pipeline-runner" single-user); a new run is PENDING; errors are
`{"error", "code", "message", "details"}` with gRPC codes.

What it is not: no Kubernetes, Argo or ML Metadata behind it, so it executes nothing. A run's
state follows a script (`script_next_run`; default: RUNNING, then SUCCEEDED), one step per GET of
that run, or else the result of the `on_create` hook: `server.on_create = fn`, called in a thread
with the created run (a dict) while the run shows RUNNING; it returns "SUCCEEDED" / "FAILED" (or
("FAILED", [failed task names])), an exception fails the run with its text as the run's error.
That is how a test plugs in a backend that does execute the pipeline. Task details are made up
for finished runs from the pipeline spec's root tasks; a real backend may list more nodes
(drivers, DAGs such as "root" or "for-loop-1"). Pipelines and pipeline versions (upload, run from
a version), recurring runs, archive, terminate, retry and delete are not implemented: their paths
answer 501 (code 12), other paths 404 (code 5).

    server = KfpApiServer(token="t")            # or the `kfp_api` fixture (token "test-token")
    with server:
        server.script_next_run(["RUNNING", "FAILED"], failed_tasks=["train-prompt"])
        client = kfp.Client(host=server.url, existing_token="t", namespace="team")
        ...
        server.requests       # every request: method, path, query, authorization, body
        server.runs[run_id]   # the run as the API returns it
        server.gets_of(run_id)

Registered by `pytest_plugins` in tests/conftest.py.
"""

from __future__ import annotations

import base64
import copy
import datetime
import itertools
import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

API = "/apis/v2beta1"
TEST_TOKEN = "test-token"

RUNTIME_STATES = (
    "RUNTIME_STATE_UNSPECIFIED", "PENDING", "RUNNING", "SUCCEEDED", "SKIPPED", "FAILED",
    "CANCELING", "CANCELED", "PAUSED",
)
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
DEFAULT_SCRIPT = ("RUNNING", "SUCCEEDED")
EPOCH = "1970-01-01T00:00:00Z"  # what the real server shows for timestamps not yet set

# gRPC status codes carried in error bodies, and the HTTP status grpc-gateway maps them to.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNIMPLEMENTED, UNAUTHENTICATED = 3, 5, 6, 12, 16
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, UNIMPLEMENTED: 501,
                UNAUTHENTICATED: 401}

# Filter predicates (filter.proto): kfp.Client sends the operation as a number.
_FILTER_OPS = {1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS",
               6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}
_EXPERIMENT_FIELDS = {"experiment_id", "display_name", "description", "created_at", "namespace",
                      "storage_state", "last_run_created_at"}
_RUN_FIELDS = {"run_id", "display_name", "experiment_id", "description", "created_at",
               "scheduled_at", "finished_at", "state", "storage_state", "service_account"}
_ALIASES = {"name": "display_name"}
_DEFAULT_PAGE_SIZE, _MAX_PAGE_SIZE = 20, 200

OnCreate = Callable[[dict], Any]


class ApiError(Exception):
    """An error answer: gRPC `code` and `message` (the HTTP status follows from the code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict:
        return {"error": self.message, "code": self.code, "message": self.message, "details": []}


def _now() -> str:
    """RFC 3339 in whole seconds, as the server's timestamps (stored in seconds) come out."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KfpApiServer:
    """The stand-in; `start()`/`stop()` or `with`. `token=None` accepts any request."""

    def __init__(self, token: str | None = None, *, multi_user: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token
        self.multi_user = multi_user
        self.default_service_account = "default-editor" if multi_user else "pipeline-runner"
        self._address = (host, port)
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)  # ML Metadata-style numeric ids (contexts, executions)
        self._hook_threads: list[threading.Thread] = []
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KfpApiServer:
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer(self._address, _Handler)
        httpd.daemon_threads = True
        httpd.api = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def stop(self, hook_timeout: float = 5.0) -> None:
        """Stops serving; waits up to `hook_timeout` s for `on_create` hooks still running."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for worker in list(self._hook_threads):
            worker.join(hook_timeout)

    def __enter__(self) -> KfpApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("KfpApiServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test controls
    def reset(self) -> None:
        """Forgets requests, experiments, runs, queued scripts and the `on_create` hook."""
        with self._lock:
            self.requests: list[dict] = []
            self.experiments: dict[str, dict] = {}
            self.runs: dict[str, dict] = {}
            self.on_create: OnCreate | None = None
            self._scripts: deque[dict] = deque()
            self._progress: dict[str, dict] = {}

    def script_next_run(self, states: list[str], failed_tasks: list[str] | None = None) -> None:
        """How the next created run's state advances: the n-th GET of it returns states[n-1],
        then the last state for good. Calls queue up, one script per created run; a queued
        script takes precedence over `on_create`. `failed_tasks`: the display names of the tasks
        a FAILED run reports as failed in run_details.task_details."""
        states = [str(s).upper() for s in states]
        unknown = [s for s in states if s not in RUNTIME_STATES]
        if not states or unknown:
            raise ValueError(f"states must be a non-empty list of {RUNTIME_STATES}; got {unknown}")
        with self._lock:
            self._scripts.append({"states": states, "failed_tasks": list(failed_tasks or [])})

    def gets_of(self, run_id: str) -> int:
        """How many times GET /runs/{run_id} was answered for this run."""
        with self._lock:
            progress = self._progress.get(run_id)
            return progress["gets"] if progress else 0

    def requests_to(self, path_prefix: str = API) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["path"].startswith(path_prefix)]

    # ------------------------------------------------------------------ request handling
    def handle(self, method: str, target: str, authorization: str | None,
               raw_body: bytes) -> tuple[int, dict]:
        """Answers one request: (HTTP status, JSON body). Records it first."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body: Any = None
        body_error = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError as err:
                body_error = ApiError(INVALID_ARGUMENT, f"request body is not JSON: {err}")
        with self._lock:
            self.requests.append({"method": method, "path": parts.path, "query": query,
                                  "authorization": authorization, "body": body})
        try:
            if self.token is not None and authorization != f"Bearer {self.token}":
                raise ApiError(UNAUTHENTICATED, "Unauthenticated: the request's bearer token is "
                                                "missing or not valid for this server")
            if body_error is not None:
                raise body_error
            return 200, self._route(method, parts.path, query, body)
        except ApiError as err:
            return err.http_status, err.body()

    def _route(self, method: str, path: str, query: dict, body: Any) -> dict:
        if not path.startswith(API + "/"):
            raise ApiError(NOT_FOUND, "Not Found")
        resource = path[len(API) + 1:].split("/")
        routes = {
            ("GET", "healthz"): lambda: self._healthz(),
            ("POST", "experiments"): lambda: self._create_experiment(body),
            ("GET", "experiments"): lambda: self._list_experiments(query),
            ("POST", "runs"): lambda: self._create_run(body, query),
            ("GET", "runs"): lambda: self._list_runs(query),
        }
        if len(resource) == 1 and (method, resource[0]) in routes:
            return routes[(method, resource[0])]()
        if len(resource) == 2 and method == "GET" and ":" not in resource[1]:
            if resource[0] == "experiments":
                return self._get_experiment(resource[1])
            if resource[0] == "runs":
                return self._get_run(resource[1])
        known = ("healthz", "experiments", "runs", "pipelines", "recurringruns", "auth",
                 "visualizations", "filters", "workflows", "scheduledworkflows")
        if resource[0] in known:
            raise ApiError(UNIMPLEMENTED, f"{method} {path} is not implemented by the KFP API "
                                          "stand-in")
        raise ApiError(NOT_FOUND, "Not Found")

    def _healthz(self) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    # ------------------------------------------------------------------ experiments
    def _namespace(self, namespace: str | None) -> str:
        """The real server's ReplaceNamespace: single-user mode has no namespaces."""
        return (namespace or "") if self.multi_user else ""

    def _create_experiment(self, body: Any) -> dict:
        body = body if isinstance(body, dict) else {}
        name = body.get("display_name") or ""
        if not name:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: Experiment must have a "
                                             "non-empty name")
        namespace = self._namespace(body.get("namespace"))
        if self.multi_user and not namespace:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: An experiment cannot have an "
                                             "empty namespace in multi-user mode")
        with self._lock:
            if any(e["display_name"] == name and e["namespace"] == namespace
                   for e in self.experiments.values()):
                raise ApiError(ALREADY_EXISTS, f"Failed to create a experiment: Already exist "
                                               f"error: Experiment {name!r} already exists in "
                                               f"namespace {namespace!r}")
            experiment = {
                "experiment_id": str(uuid.uuid4()), "display_name": name,
                "description": body.get("description") or "", "created_at": _now(),
                "namespace": namespace, "storage_state": "AVAILABLE",
                "last_run_created_at": EPOCH,
            }
            self.experiments[experiment["experiment_id"]] = experiment
            return copy.deepcopy(experiment)

    def _get_experiment(self, experiment_id: str) -> dict:
        with self._lock:
            if experiment_id not in self.experiments:
                raise ApiError(NOT_FOUND, f"Failed to fetch experiment: ResourceNotFoundError: "
                                          f"Experiment {experiment_id} not found")
            return copy.deepcopy(self.experiments[experiment_id])

    def _list_experiments(self, query: dict) -> dict:
        namespace = self._namespace(query.get("namespace"))
        if self.multi_user and not namespace:
            raise ApiError(INVALID_ARGUMENT, "List experiments failed: Invalid input error: An "
                                             "experiment cannot have an empty namespace in "
                                             "multi-user mode")
        with self._lock:
            items = [e for e in self.experiments.values() if e["namespace"] == namespace]
            return _page(items, query, _EXPERIMENT_FIELDS, "experiments")

    # ------------------------------------------------------------------ runs
    def _create_run(self, body: Any, query: dict) -> dict:
        body = body if isinstance(body, dict) else {}
        if not body.get("display_name"):
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: run must have a display name")
        if not body.get("pipeline_spec"):
            if body.get("pipeline_version_reference"):
                raise ApiError(UNIMPLEMENTED, "runs from a pipeline version are not implemented "
                                              "by the KFP API stand-in")
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: a run needs a pipeline spec "
                                             "or a pipeline version reference")
        experiment_id = body.get("experiment_id") or query.get("experiment_id") or ""
        with self._lock:
            experiment = self.experiments.get(experiment_id)
            if experiment_id and experiment is None:
                raise ApiError(NOT_FOUND, f"Failed to create a run: ResourceNotFoundError: "
                                          f"Experiment {experiment_id} not found")
            if experiment is None and self.multi_user:
                raise ApiError(INVALID_ARGUMENT, "Failed to create a run: Invalid input error: "
                                                 "in multi-user mode a run needs an experiment")
            experiment = experiment or self._default_experiment()
            run = self._new_run(body, experiment)
            created = copy.deepcopy(run)
            script = self._scripts.popleft() if self._scripts else None
            hook = self.on_create if script is None else None
            if script is None and hook is None:
                script = {"states": list(DEFAULT_SCRIPT), "failed_tasks": []}
            self._progress[run["run_id"]] = {"gets": 0, "script": script}
            if hook is not None:
                self._set_state(run, "RUNNING")
                worker = threading.Thread(target=self._run_hook, args=(hook, copy.deepcopy(run)),
                                          name=f"kfp-run-{run['run_id'][:8]}", daemon=True)
                self._hook_threads.append(worker)
                worker.start()
        return created

    def _default_experiment(self) -> dict:
        """Single-user mode files runs without an experiment under "Default"."""
        for experiment in self.experiments.values():
            if experiment["display_name"] == "Default":
                return experiment
        created = self._create_experiment({"display_name": "Default"})
        return self.experiments[created["experiment_id"]]

    def _new_run(self, body: dict, experiment: dict) -> dict:
        now = _now()
        runtime_config = copy.deepcopy(body.get("runtime_config") or {})
        runtime_config.setdefault("parameters", {})
        run = {
            "experiment_id": experiment["experiment_id"], "run_id": str(uuid.uuid4()),
            "display_name": body["display_name"], "storage_state": "AVAILABLE",
            "description": body.get("description") or "",
            "pipeline_spec": copy.deepcopy(body["pipeline_spec"]),
            "runtime_config": runtime_config,
            "service_account": body.get("service_account") or self.default_service_account,
            "created_at": now, "scheduled_at": now, "finished_at": EPOCH, "state": "PENDING",
            "run_details": {"pipeline_context_id": str(next(self._ids)),
                            "pipeline_run_context_id": str(next(self._ids))},
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        experiment["last_run_created_at"] = now
        self.runs[run["run_id"]] = run
        return run

    def _get_run(self, run_id: str) -> dict:
        with self._lock:
            run = self.runs.get(run_id)
            if run is None:
                raise ApiError(NOT_FOUND, f"Failed to get run: ResourceNotFoundError: Run "
                                          f"{run_id} not found")
            progress = self._progress[run_id]
            progress["gets"] += 1
            script = progress["script"]
            if script is not None:
                states = script["states"]
                state = states[min(progress["gets"], len(states)) - 1]
                self._set_state(run, state, script["failed_tasks"])
            return copy.deepcopy(run)

    def _list_runs(self, query: dict) -> dict:
        experiment_id = query.get("experiment_id") or ""
        namespace = self._namespace(query.get("namespace"))
        if self.multi_user and not experiment_id and not namespace:
            raise ApiError(INVALID_ARGUMENT, "Failed to list runs: Invalid input error: In "
                                             "multi-user mode, ListRuns requires an experiment "
                                             "or a namespace")
        with self._lock:
            items = list(self.runs.values())
            if experiment_id:
                items = [r for r in items if r["experiment_id"] == experiment_id]
            elif self.multi_user:
                items = [r for r in items
                         if self.experiments[r["experiment_id"]]["namespace"] == namespace]
            return _page(items, query, _RUN_FIELDS, "runs")

    # ------------------------------------------------------------------ state changes
    def _set_state(self, run: dict, state: str, failed_tasks: list[str] | None = None,
                   message: str | None = None) -> None:
        if run["state"] == state:
            return
        now = _now()
        run["state"] = state
        run["state_history"].append({"update_time": now, "state": state})
        if state not in FINAL_STATES:
            return
        run["finished_at"] = now
        run["run_details"]["task_details"] = self._task_details(run, state, failed_tasks or [])
        if state == "FAILED":
            if message is None:
                message = (f"tasks failed: {', '.join(failed_tasks)}" if failed_tasks
                           else "the run failed")
            run["error"] = {"code": 2, "message": message, "details": []}

    def _task_details(self, run: dict, state: str, failed_tasks: list[str]) -> list[dict]:
        """One entry per root task of the spec (dependency order) for a finished run; a FAILED
        run reports `failed_tasks` as FAILED and, before them, the first other task as
        SUCCEEDED."""
        names = _root_task_names(run["pipeline_spec"])
        if state == "FAILED":
            done = [n for n in names if n not in failed_tasks][:1]
            wanted = [(n, "SUCCEEDED") for n in done] + [(n, "FAILED") for n in failed_tasks]
        else:
            wanted = [(n, state) for n in names]
        details = []
        for name, task_state in wanted:
            now = _now()
            detail = {
                "run_id": run["run_id"], "task_id": str(uuid.uuid4()), "display_name": name,
                "create_time": run["created_at"], "start_time": run["created_at"],
                "end_time": now, "state": task_state, "execution_id": str(next(self._ids)),
                "pod_name": f"{name}-{uuid.uuid4().hex[:10]}",
                "state_history": [{"update_time": run["created_at"], "state": "RUNNING"},
                                  {"update_time": now, "state": task_state}],
                "child_tasks": [],
            }
            if task_state == "FAILED":
                detail["error"] = {"code": 2, "message": f"task {name} failed", "details": []}
            details.append(detail)
        return details

    def _run_hook(self, hook: OnCreate, run: dict) -> None:
        failed_tasks: list[str] = []
        message = None
        try:
            result = hook(run)
            if isinstance(result, tuple):
                result, failed_tasks = result[0], list(result[1] or [])
            state = str(result).upper()
            if state not in FINAL_STATES:
                state, message = "FAILED", f"on_create returned {result!r}, not a final state"
        except Exception as err:  # the hook's failure is the run's failure
            state, message = "FAILED", f"{type(err).__name__}: {err}"
        with self._lock:
            stored = self.runs.get(run["run_id"])
            if stored is not None:  # gone after reset()
                self._set_state(stored, state, failed_tasks, message)


def _root_task_names(spec: dict) -> list[str]:
    """The root DAG's task names in dependency order (ties: order in the spec)."""
    if "pipeline_spec" in spec:  # a spec with a platform spec travels as {pipeline_spec, ...}
        spec = spec["pipeline_spec"]
    tasks = spec.get("root", {}).get("dag", {}).get("tasks", {})
    order: list[str] = []
    pending = dict(tasks)
    while pending:
        ready = [k for k, t in pending.items()
                 if all(d in order or d not in tasks for d in t.get("dependentTasks", []))]
        ready = ready or list(pending)[:1]
        for key in ready:
            order.append(key)
            del pending[key]
    return [tasks[k].get("taskInfo", {}).get("name", k) for k in order]


# ---------------------------------------------------------------------- listing
def _page(items: list[dict], query: dict, fields: set[str], key: str) -> dict:
    """Filter, sort and one page of `items`, as {key: [...], total_size, next_page_token};
    empty fields are left out as the server's JSON leaves them out."""
    predicates = _parse_filter(query.get("filter") or "", fields)
    items = [i for i in items if all(_matches(i, p) for p in predicates)]
    sort_by = (query.get("sort_by") or "").split()
    if sort_by:
        field = _ALIASES.get(sort_by[0], sort_by[0])
        if field not in fields or len(sort_by) > 2 or sort_by[1:] not in ([], ["asc"], ["desc"]):
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: invalid sort_by "
                                             f"{query['sort_by']!r}")
        items = sorted(items, key=lambda i: str(i.get(field, "")), reverse=sort_by[1:] == ["desc"])
    try:
        page_size = int(query.get("page_size") or 0) or _DEFAULT_PAGE_SIZE
        token = query.get("page_token") or ""
        offset = json.loads(base64.urlsafe_b64decode(token))["offset"] if token else 0
    except (ValueError, KeyError, TypeError) as err:
        raise ApiError(INVALID_ARGUMENT, f"Invalid input error: bad page_size or page_token: "
                                         f"{err}") from None
    page_size = min(page_size, _MAX_PAGE_SIZE)
    out: dict[str, Any] = {}
    chosen = items[offset:offset + page_size]
    if chosen:
        out[key] = copy.deepcopy(chosen)
    if items:
        out["total_size"] = len(items)
    if offset + page_size < len(items):
        next_token = json.dumps({"offset": offset + page_size}).encode()
        out["next_page_token"] = base64.urlsafe_b64encode(next_token).decode()
    return out


def _parse_filter(text: str, fields: set[str]) -> list[tuple[str, str, Any]]:
    if not text:
        return []
    try:
        predicates = json.loads(text).get("predicates", [])
    except (ValueError, AttributeError) as err:
        raise ApiError(INVALID_ARGUMENT, f"Invalid input error: filter is not a JSON Filter: "
                                         f"{err}") from None
    parsed = []
    for predicate in predicates:
        field = _ALIASES.get(predicate.get("key", ""), predicate.get("key", ""))
        if field not in fields:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: no support for filtering on "
                                             f"unrecognized field {predicate.get('key')!r}")
        operation = predicate.get("operation")
        operation = _FILTER_OPS.get(operation, operation)
        if operation not in _FILTER_OPS.values():
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: unknown filter operation "
                                             f"{predicate.get('operation')!r}")
        parsed.append((field, operation, _predicate_value(predicate)))
    return parsed


def _predicate_value(predicate: dict) -> Any:
    for name, value in predicate.items():
        plain = name.replace("_", "").lower()
        if plain in ("stringvalue", "timestampvalue"):
            return value
        if plain in ("intvalue", "longvalue"):
            return int(value)
        if plain in ("stringvalues", "intvalues", "longvalues"):
            return list(value.get("values", []))
    raise ApiError(INVALID_ARGUMENT, "Invalid input error: a filter predicate needs a value")


def _matches(item: dict, predicate: tuple[str, str, Any]) -> bool:
    field, operation, wanted = predicate
    value = item.get(field)
    if operation == "EQUALS":
        return value == wanted
    if operation == "NOT_EQUALS":
        return value != wanted
    if operation == "IN":
        return value in wanted
    if operation == "IS_SUBSTRING":
        return str(wanted) in str(value)
    compare = {"GREATER_THAN": lambda a, b: a > b, "GREATER_THAN_EQUALS": lambda a, b: a >= b,
               "LESS_THAN": lambda a, b: a < b, "LESS_THAN_EQUALS": lambda a, b: a <= b}
    return compare[operation](str(value), str(wanted))


# ---------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    timeout = 60  # an idle kept-alive connection is closed after this

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        api: KfpApiServer = self.server.api  # type: ignore[attr-defined]
        status, payload = api.handle(self.command, self.path, self.headers.get("Authorization"),
                                     raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _dispatch

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture()
def kfp_api():
    """A started KfpApiServer (multi-user, token "test-token"), stopped after the test."""
    server = KfpApiServer(token=TEST_TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()
