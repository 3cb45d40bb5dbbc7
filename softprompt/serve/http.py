"""The HTTP layer: the FastAPI app and the guard in front of it.

Endpoints: POST /v1/classify, GET /v1/tasks, POST /v1/reload, GET /metrics (Prometheus),
GET /healthz (liveness), GET /readyz (model loaded, every task has a verified prompt); the OpenAPI
schema at /openapi.json. With a token configured, every request but /healthz and /readyz needs
`Authorization: Bearer <token>` (compared in constant time). Request bodies over
`max_body_bytes` are refused (413) before any parsing.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from softprompt.model import FrozenLM
from softprompt.serve.config import ServeConfig
from softprompt.serve.requests import ClassifyRequest, ClassifyResponse
from softprompt.serve.service import Service

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")  # reachable without the token (probes carry no secrets)


class _Guard:
    """ASGI middleware in front of everything: bearer token (constant-time compare), body size
    limit (checked while reading, before any parsing), and per-route request counts."""

    def __init__(self, app, service: Service, routes: set[str]) -> None:
        self.app, self.service, self.routes = app, service, routes
        self.token = service.config.token.encode() if service.config.token else None

    def _authorized(self, scope) -> bool:
        if self.token is None or scope["path"] in OPEN_PATHS:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

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

        if not self._authorized(scope):
            metrics.errors.labels("unauthorized").inc()
            return await _plain(counted_send, 401, "missing or wrong bearer token",
                                {b"www-authenticate": b"Bearer"})

        limit = self.service.config.max_body_bytes
        too_large = f"request body over the {limit}-byte limit"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            metrics.errors.labels("body_too_large").inc()
            return await _plain(counted_send, 413, too_large)
        body, more = b"", True
        while more:  # read it all (bounded) before the app parses anything
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                metrics.errors.labels("body_too_large").inc()
                return await _plain(counted_send, 413, too_large)
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


def _add_routes(app: FastAPI, service: Service) -> None:
    config = service.config

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        service.metrics.errors.labels("internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        detail = f"internal error: {type(err).__name__}: {err}"
        return JSONResponse({"detail": detail}, status_code=500)

    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: model loaded and every task has a verified prompt")
    async def readyz():
        served = {t.task: service.states[t.task].versions if t.task in service.states else None
                  for t in config.tasks}
        body = {"ready": service.ready, "tasks": served, "errors": service.last_error}
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

    @app.post("/v1/reload",
              summary="re-read the registry now; moved aliases are picked up if they verify")
    async def reload():
        return await service.reload()

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        text = generate_latest(service.metrics.registry)
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)


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
                  description="One frozen LM serving every registered task's soft prompt; "
                              "mixed-task micro-batches.")
    app.state.service = service
    _add_routes(app, service)
    routes = {r.path for r in app.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(_Guard, service=service, routes=routes)
    return app
