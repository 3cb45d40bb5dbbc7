"""The HTTP/1.1 connection under uvicorn: deadlines for a request's head and body, and a bound on
the head's size.

uvicorn times out only idle keep-alive connections, and its keep-alive timer stops at the first
byte received, so a client that sends half a request head and stalls (or trickles a byte at a
time) would hold a connection and its file descriptor for good. ASGI middleware cannot help, as
the app is called only once the head is complete. So the service runs uvicorn's h11 protocol
(the httptools one does not bound a head's size) with a head size limit and one timer per
connection, armed anew whenever the peer enters another phase of a request:

- head: from connecting, or from the previous response, until the request head is complete
  (`header_timeout_seconds`);
- body: from the head until the request's end (`body_timeout_seconds` plus BODY_GRACE_SECONDS:
  the guard in front of the app answers 408 at `body_timeout_seconds` while it reads a body; this
  timer also closes a body that no one reads).

A connection past its deadline is closed. A request head over `max_header_bytes` gets 431 and the
connection is closed. h11's own bound (`h11_max_incomplete_event_size`, set to the same size)
only counts a head still incomplete after a read, so a head that arrives whole in one read is
measured here. `uvicorn_options` gives the uvicorn.Config keywords that
install all of this; `softprompt serve` and bench/server_thread.py both use it.
"""

from __future__ import annotations

import asyncio
import re

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from softprompt.serve.config import ServeConfig

BODY_GRACE_SECONDS = 1.0  # lets the guard's 408 go out before the connection is cut
HEAD_END = re.compile(rb"\n\r?\n")  # the blank line after the headers, as h11 finds it


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a size limit for request heads and a deadline for each
    request's head and body (class attributes, set per service by `uvicorn_options`)."""

    head_timeout: float = 10.0
    body_timeout: float = 30.0 + BODY_GRACE_SECONDS
    max_head_bytes: int = 16 * 1024

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None  # "head", "body", or None while the app answers
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self._head_size(data) > self.max_head_bytes:
            self._refuse_head()
            return
        super().data_received(data)
        self._watch()

    def _head_size(self, data: bytes) -> int:
        """Bytes of the request head so far: those h11 holds and `data`, up to the blank line."""
        buffered = self.conn.trailing_data[0]
        seen = buffered + data if buffered else data
        end = HEAD_END.search(seen)
        return end.end() if end else len(seen)

    def _refuse_head(self) -> None:
        self.logger.warning("refusing a request head over %d bytes", self.max_head_bytes)
        body = b"request head over the %d-byte limit" % self.max_head_bytes
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _watch(self) -> None:
        """Arms the deadline of the phase the peer is in now, unless it is the one running."""
        if self.transport.is_closing():
            self._cancel()
            return
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase is not None:
            timeout = self.head_timeout if phase == "head" else self.body_timeout
            self._deadline = self.loop.call_later(timeout, self._expire, phase)

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.warning("closing a connection that stalled in a request %s", phase)
            self.transport.close()


def uvicorn_options(config: ServeConfig) -> dict:
    """The uvicorn.Config keywords that give a server the service's connection limits."""
    protocol = type(
        "ServeH11Protocol",
        (DeadlineH11Protocol,),
        {
            "head_timeout": config.header_timeout_seconds,
            "body_timeout": config.body_timeout_seconds + BODY_GRACE_SECONDS,
            "max_head_bytes": config.max_header_bytes,
        },
    )
    return {"http": protocol, "h11_max_incomplete_event_size": config.max_header_bytes}
