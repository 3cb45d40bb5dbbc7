"""A stand-in for the Kubernetes API server's custom-object endpoints, and strict validation of
the Kubeflow job kinds against their published models.

KubeApiServer answers the REST paths the official `kubernetes` client's CustomObjectsApi uses,
for TrainJobs (trainer.kubeflow.org/v1alpha1) and PyTorchJobs (kubeflow.org/v1):

    POST   /apis/{group}/{version}/namespaces/{ns}/{plural}         create (201, 409 if present)
    GET    /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}  read (200, 404)
    DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}  delete (200, 404)

with Kubernetes' Status bodies for errors, a bearer token check, and the checks a real server
makes on create: the body's apiVersion and kind are the path's, its namespace is the path's,
and the object passes strict validation against the kind's schema (here, the kubeflow models).
It is no cluster: nothing runs a job. A test scripts each job's life instead: `statuses[name]`
lists the status each read returns in turn (the last one repeats), `on_create(obj)` runs when
a job is created (e.g. to write what the job's pods would), `linger` keeps a deleted job
visible for that many reads, as a job with pods still stopping is, and a plural in `absent`
answers as in a cluster without that CRD.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = {
    ("trainer.kubeflow.org", "v1alpha1", "trainjobs"): "TrainJob",
    ("kubeflow.org", "v1", "pytorchjobs"): "PyTorchJob",
}
PATH = re.compile(r"/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/"
                  r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?")


# ------------------------------------------------------------------ strict validation
def _drop_none(value):
    """The object without None values: the models write an unset field as nothing."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def trainjob_round_trip(obj: dict) -> dict:
    """The TrainJob as kubeflow_trainer_api's model reads and writes it back."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return TrainerV1alpha1TrainJob.from_dict(obj).to_dict()


def pytorchjob_round_trip(obj: dict) -> dict:
    """The PyTorchJob as kubeflow-training's KubeflowOrgV1PyTorchJob reads and writes it back."""
    from kubeflow.training import ApiClient
    from kubeflow.training.utils.utils import FakeResponse

    client = ApiClient()
    model = client.deserialize(FakeResponse(obj), "KubeflowOrgV1PyTorchJob")
    return client.sanitize_for_serialization(model)


ROUND_TRIPS = {"TrainJob": trainjob_round_trip, "PyTorchJob": pytorchjob_round_trip}


def _differences(given, back, path: str = "") -> list[str]:
    if isinstance(given, dict) and isinstance(back, dict):
        out = [f"{path}.{k}: not in the schema" for k in given if k not in back]
        for k in given.keys() & back.keys():
            out += _differences(given[k], back[k], f"{path}.{k}")
        return out
    if isinstance(given, list) and isinstance(back, list) and len(given) == len(back):
        return [d for i, (g, b) in enumerate(zip(given, back, strict=True))
                for d in _differences(g, b, f"{path}[{i}]")]
    return [] if given == back else [f"{path}: {given!r} reads back as {back!r}"]


def validate_strict(obj: dict) -> None:
    """Raises ValueError naming every field of `obj` that its kind's model does not know (the
    models drop unknown fields silently, so the check compares the round trip to the input)."""
    round_trip = ROUND_TRIPS.get(obj.get("kind"))
    if round_trip is None:
        raise ValueError(f"no model for kind {obj.get('kind')!r}")
    given = _drop_none(json.loads(json.dumps(obj)))
    problems = _differences(given, _drop_none(round_trip(obj)))
    if problems:
        name = obj.get("metadata", {}).get("name")
        raise ValueError(f"{obj['kind']}/{name}: " + "; ".join(problems))


# ------------------------------------------------------------------ the server
def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class KubeApiServer:
    """The stand-in, on 127.0.0.1 (module docstring). Use as a context manager."""

    def __init__(self, token: str = "test-token"):
        self.token = token
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name) -> object
        self.statuses: dict[str, list[dict]] = {}
        self.on_create = None
        self.linger = 0
        self.absent: set[str] = set()
        self.requests: list[dict] = []
        self._lingering: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def __enter__(self) -> KubeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()

    def client(self, token: str | None = None):
        """A CustomObjectsApi of the official client, pointed here with the bearer token (the
        server's own unless `token`)."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        config.api_key = {"authorization": token or self.token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return client.CustomObjectsApi(client.ApiClient(config))

    def verbs(self) -> set[tuple[str, str]]:
        """(RBAC verb, plural) of every request made: what a Role must grant."""
        names = {"POST": "create", "GET": "get", "DELETE": "delete"}
        return {(names[r["method"]], r["plural"]) for r in self.requests}

    # -------------------------------------------------------------- request handling
    def _read(self, key: tuple[str, str, str]) -> dict | None:
        obj = self.objects.get(key)
        if obj is None:
            return None
        if key in self._lingering:
            self._lingering[key] -= 1
            if self._lingering[key] < 0:
                del self._lingering[key], self.objects[key]
                return None
            return obj
        script = self.statuses.get(key[2])
        if script:
            obj["status"] = script.pop(0) if len(script) > 1 else script[0]
        return obj

    def _create(self, key: tuple[str, str, str], kind: str, api_version: str,
                body: dict) -> tuple[int, dict]:
        meta = body.get("metadata") or {}
        if body.get("apiVersion") != api_version or body.get("kind") != kind:
            return 400, _status(400, "BadRequest", f"the body is {body.get('apiVersion')} "
                                f"{body.get('kind')}, the path {api_version} {kind}")
        if meta.get("namespace", key[1]) != key[1] or meta.get("name") != key[2]:
            return 400, _status(400, "BadRequest", "the namespace of the object does not match "
                                "the namespace on the request")
        try:
            validate_strict(body)
        except ValueError as err:
            return 422, _status(422, "Invalid", f"{kind}.{key[0]} {key[2]!r} is invalid: {err}")
        if key in self.objects:
            return 409, _status(409, "AlreadyExists",
                                f'{key[0]} "{key[2]}" already exists')
        obj = json.loads(json.dumps(body))
        obj["metadata"] |= {"namespace": key[1], "uid": f"uid-{len(self.requests)}",
                            "resourceVersion": str(len(self.requests))}
        self.objects[key] = obj
        if self.on_create is not None:
            self.on_create(obj)
        return 201, obj

    def handle(self, method: str, path: str, headers, body: dict | None) -> tuple[int, dict]:
        match = PATH.fullmatch(path.split("?")[0])
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if match is None:
            return 404, _status(404, "NotFound", "the server could not find the requested "
                                "resource")
        group, version, ns, plural, name = match.group("group", "version", "ns", "plural",
                                                       "name")
        kind = KINDS.get((group, version, plural))
        with self._lock:
            self.requests.append({"method": method, "path": path, "plural": plural,
                                  "body": body})
            if kind is None or plural in self.absent:  # a cluster without the CRD
                return 404, _status(404, "NotFound", "the server could not find the requested "
                                    "resource")
            if method == "POST" and name is None:
                name = (body or {}).get("metadata", {}).get("name", "")
                return self._create((plural, ns, name), kind, f"{group}/{version}", body or {})
            key = (plural, ns, name or "")
            obj = self._read(key)
            if obj is None:
                return 404, _status(404, "NotFound", f'{plural}.{group} "{name}" not found')
            if method == "GET":
                return 200, obj
            if method == "DELETE":
                self._lingering.setdefault(key, self.linger)
                if self._lingering[key] == 0:
                    del self._lingering[key], self.objects[key]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                             "details": {"name": name, "group": group, "kind": plural}}
        return 405, _status(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                code, answer = server.handle(method, self.path, self.headers, body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def do_DELETE(self):
                self._answer("DELETE")

            def log_message(self, *args) -> None:  # quiet test output
                pass

        return Handler
