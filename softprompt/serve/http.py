"""The HTTP layer: the FastAPI app behind its guard (softprompt.serve.guard).

Endpoints: POST /v1/classify, GET /v1/tasks, POST /v1/reload, GET /metrics (Prometheus),
GET /healthz (liveness), GET /readyz (readiness); the OpenAPI schema at /openapi.json. With a
token configured, every request but /healthz and /readyz needs `Authorization: Bearer <token>`.
/readyz answers `{"ready": bool}` (200 or 503) to anyone, and adds each task's served versions
and last error for a request that carries the token (for every request when no token is
configured).

Error bodies are `{"detail": ...}` and always serialize: a validation error names the field and
never echoes the request's values (a NaN or a lone surrogate in them cannot be written as JSON),
and any text in an error is made valid UTF-8 first.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from softprompt.model import FrozenLM
from softprompt.serve.config import ServeConfig
from softprompt.serve.guard import Guard
from softprompt.serve.requests import ClassifyRequest, ClassifyResponse
from softprompt.serve.service import Service

log = logging.getLogger(__name__)


def _text(value: object) -> str:
    """`value` as text that UTF-8 (hence JSON) can carry: lone surrogates become escapes."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _validation_detail(errors: list[dict]) -> list[dict]:
    """Pydantic's errors without the request's values: each error's type, location, message and
    context, as text."""
    detail = []
    for error in errors:
        item = {
            "type": _text(error.get("type", "")),
            "loc": [p if isinstance(p, int) else _text(p) for p in error.get("loc", ())],
            "msg": _text(error.get("msg", "")),
        }
        if error.get("ctx"):
            item["ctx"] = {_text(k): _text(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return detail


def _add_error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        service.metrics.errors.labels("bad_input").inc()
        return JSONResponse({"detail": _validation_detail(err.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        headers = getattr(err, "headers", None)
        return JSONResponse({"detail": _text(err.detail)}, err.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        service.metrics.errors.labels("internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        detail = f"internal error: {type(err).__name__}: {_text(err)}"
        return JSONResponse({"detail": detail}, status_code=500)


def _add_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", summary="liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="readiness: model loaded and every task has a verified prompt. "
        "Anyone gets {ready}; with the token also each task's served "
        "versions (tasks) and last error (errors)",
    )
    async def readyz(request: Request):
        detailed = getattr(request.state, "authorized", False)
        body = service.readiness(detailed)
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        response_model_exclude_none=True,
        summary="rank-classify one input of any served task",
    )
    async def classify(req: ClassifyRequest):
        try:
            return await service.classify(req.task, req.input)
        except HTTPException:
            raise
        except RuntimeError as err:
            raise HTTPException(500, str(err)) from err

    @app.get(
        "/v1/tasks",
        summary="every served task by name: status 'serving' with its prompt versions, "
        "template, label words and input fields (and 'error' when its last reload "
        "was refused), or status 'unavailable' with the 'error' that keeps it from "
        "serving",
    )
    async def tasks():
        return service.task_views()

    @app.post(
        "/v1/reload", summary="re-read the registry now; moved aliases are picked up if they verify"
    )
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

    app = FastAPI(
        title="softprompt inference",
        version="1",
        lifespan=lifespan,
        description="One frozen LM serving every registered task's soft prompt; "
        "mixed-task micro-batches.",
    )
    app.state.service = service
    _add_error_handlers(app, service)
    _add_routes(app, service)
    routes = {r.path for r in app.routes} | {"/openapi.json", "/docs"}
    app.add_middleware(Guard, service=service, routes=routes)
    return app
