"""The ASGI guard in front of the service's app: the bearer token, the request body's size and
read deadline, and per-route request counts.

With a token configured, every request but the probes (/healthz, /readyz) needs exactly one
`Authorization: Bearer <token>` header (compared in constant time), and a request with more
than one Authorization header is refused (400) on every path, probes included, since proxies and
frameworks disagree on which of them counts. Whether a request carried the token is left in its
scope's state (`authorized`), so /readyz can show its details to token holders only.

The body is read in full before the app parses anything: over `max_body_bytes` it is refused
(413), and when it has not arrived `body_timeout_seconds` after the headers the request gets 408
and its connection is closed. After the guard's other early answers (400, 401, 413) the server
drops the unread rest of the body, and the protocol's body deadline (softprompt.serve.protocol)
closes a connection that keeps trickling it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

log = logging.getLogger(__name__)

# Reachable without the token: the probes carry no secrets, and the API's description (the
# OpenAPI document and the /docs page that reads it) is needed to send the token at all.
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect")


class Guard:
    """ASGI middleware: bearer token, body size limit and read deadline, request counts."""

    def __init__(self, app, service, routes: set[str]) -> None:
        self.app, self.service, self.routes = app, service, routes
        self.token = service.config.token.encode() if service.config.token else None

    def _authorized(self, values: list[bytes]) -> bool:
        """Whether the request's one Authorization header carries the token."""
        if self.token is None:
            return True
        if len(values) != 1:
            return False
        scheme, _, given = values[0].partition(b" ")
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

        auth = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(auth) > 1 and self.token is not None:
            metrics.errors.labels("unauthorized").inc()
            return await _plain(counted_send, 400, "more than one Authorization header")
        authorized = self._authorized(auth)
        scope.setdefault("state", {})["authorized"] = authorized
        if not authorized and scope["path"] not in OPEN_PATHS:
            metrics.errors.labels("unauthorized").inc()
            return await _plain(
                counted_send, 401, "missing or wrong bearer token", {b"www-authenticate": b"Bearer"}
            )
        body = await self._read_body(scope, receive, counted_send)
        if body is None:  # answered already, or the client went away
            return None
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

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole request body, bounded in size and time; None once refused (413, 408) or
        when the client disconnected."""
        config, metrics = self.service.config, self.service.metrics
        limit = config.max_body_bytes
        too_large = f"request body over the {limit}-byte limit"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            metrics.errors.labels("body_too_large").inc()
            return await _plain(send, 413, too_large)
        body, more = b"", True
        try:
            async with asyncio.timeout(config.body_timeout_seconds):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > limit:
                        metrics.errors.labels("body_too_large").inc()
                        return await _plain(send, 413, too_large)
        except TimeoutError:
            metrics.errors.labels("body_timeout").inc()
            seconds = config.body_timeout_seconds
            detail = f"request body not received within {seconds:g} s"
            return await _plain(send, 408, detail, close=True)
        return body


async def _plain(
    send, status: int, detail: str, headers: dict[bytes, bytes] | None = None, close: bool = False
) -> None:
    """Answers `{"detail": ...}` itself; with `close` the server closes the connection after."""
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += list((headers or {}).items())
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
