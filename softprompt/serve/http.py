"""The HTTP layer: the FastAPI app behind its guard (softprompt.serve.guard).

Endpoints: POST /v1/classify, POST /v1/classify:batch, GET /v1/tasks, POST /v1/reload,
GET /metrics (Prometheus), GET /healthz (liveness), GET /readyz (readiness); the OpenAPI schema
at /openapi.json. With a token configured, every request but /healthz, /readyz and the API's
description (/openapi.json and the /docs page) needs
`Authorization: Bearer <token>`, and the schema declares that bearer scheme on those routes, so
/docs can send the token (the guard does the checking). /readyz answers `{"ready": bool}` (200 or
503) to anyone, and adds each task's served versions and last error for a request that carries
the token (for every request when no token is configured).

POST /v1/classify:batch takes `{"items": [{"task": ..., "input": ...}, ...]}` (at most
`max_batch_items` items of any tasks) and answers 200 with one result per item in input order,
`{"ok": true, ...the classify response}` or `{"ok": false, "status": 404|422|500|503,
"detail": ...}`. The items go to the micro-batcher together, so they share forwards. A body that
is not such a list (or holds too many items) is refused as a whole (422).

Error bodies are `{"detail": ...}` and always serialize: a validation error names the field and
never echoes the request's values (a NaN or a lone surrogate in them cannot be written as JSON),
and any text in an error is made valid UTF-8 first.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.model import FrozenLM
from softprompt.serve.config import ServeConfig
from softprompt.serve.guard import Guard
from softprompt.serve.requests import (
    BatchRequest,
    BatchResponse,
    ClassifyRequest,
    ClassifyResponse,
    Health,
    Readiness,
    ReloadOutcome,
    TaskView,
    json_text,
    validation_detail,
)
from softprompt.serve.service import Service

log = logging.getLogger(__name__)

# Documents the token for the OpenAPI schema and /docs only; the guard checks it.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="the service's token (`softprompt serve --token-env`)",
)
UNAUTHORIZED = {401: {"description": "missing or wrong bearer token"}}


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        service.metrics.errors.labels("bad_input").inc()
        return JSONResponse({"detail": validation_detail(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        headers = getattr(err, "headers", None)
        return JSONResponse({"detail": json_text(err.detail)}, err.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        service.metrics.errors.labels("internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        detail = f"internal error: {type(err).__name__}: {json_text(err)}"
        return JSONResponse({"detail": detail}, status_code=500)


def _add_probes(app: FastAPI, service: Service) -> None:
    # /readyz answers anyone; with the token it shows more, so the token is optional there.
    optional_token = {"security": [{}, {"bearer": []}]} if service.config.token else None

    @app.get("/healthz", response_model=Health, summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        response_model_exclude_unset=True,
        responses={503: {"model": Readiness, "description": "not ready"}},
        openapi_extra=optional_token,
        summary="readiness: model loaded and every task has a verified prompt. "
        "Anyone gets {ready}; with the token also each task's served "
        "versions (tasks) and last error (errors)",
    )
    async def readyz(request: Request, response: Response):
        detailed = getattr(request.state, "authorized", False)
        response.status_code = 200 if service.ready else 503
        return service.readiness(detailed)


def _add_routes(app: FastAPI, service: Service) -> None:
    token = [Security(BEARER)] if service.config.token else []

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        dependencies=token,
        responses=UNAUTHORIZED,
        summary="rank-classify one input of any served task",
    )
    async def classify(req: ClassifyRequest):
        try:
            return await service.classify(req.task, req.input)
        except HTTPException:
            raise
        except RuntimeError as err:
            raise HTTPException(500, str(err)) from err

    @app.post(
        "/v1/classify:batch",
        response_model=BatchResponse,
        response_model_exclude_none=True,
        dependencies=token,
        responses=UNAUTHORIZED,
        summary="rank-classify inputs of any served tasks together: one result per item, in "
        "input order, each answered (ok) or refused with its own status and detail",
    )
    async def classify_batch(batch: BatchRequest):
        limit = service.config.max_batch_items
        if len(batch.items) > limit:
            service.metrics.errors.labels("bad_input").inc()
            raise HTTPException(422, f"{len(batch.items)} items; a batch holds at most {limit}")
        return {"results": await service.classify_batch(batch.items)}

    @app.get(
        "/v1/tasks",
        response_model=dict[str, TaskView],
        response_model_exclude_unset=True,
        dependencies=token,
        responses=UNAUTHORIZED,
        summary="every served task by name: status 'serving' with its prompt versions, "
        "template, label words and input fields (and 'error' when its last reload "
        "was refused), or status 'unavailable' with the 'error' that keeps it from "
        "serving",
    )
    async def tasks():
        return service.task_views()

    @app.post(
        "/v1/reload",
        response_model=dict[str, ReloadOutcome],
        response_model_exclude_unset=True,
        dependencies=token,
        responses=UNAUTHORIZED,
        summary="re-read the registry now; moved aliases are picked up if they verify",
    )
    async def reload():
        return await service.reload()

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        dependencies=token,
        responses=UNAUTHORIZED,
    )
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

    app = FastAPI(
        title="softprompt inference",
        version="1",
        lifespan=lifespan,
        description="One frozen LM serving every registered task's soft prompt; "
        "mixed-task micro-batches.",
    )
    app.state.service = service
    _add_error_handlers(app, service)
    _add_probes(app, service)
    _add_routes(app, service)
    routes = {r.path for r in app.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(Guard, service=service, routes=routes)
    return app
