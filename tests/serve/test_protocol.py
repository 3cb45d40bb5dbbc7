"""The connection under uvicorn (softprompt.serve.protocol), against the real server started as
`softprompt serve` starts it: a request head that stalls or trickles is cut at its deadline, a body
no one reads is cut too, an oversized head is refused, and valid requests keep being answered."""

from __future__ import annotations

import time

import httpx
from served_tasks import AUTH, TOKEN, connect, read_until_closed, serve_config

from softprompt.serve.protocol import BODY_GRACE_SECONDS, DeadlineH11Protocol, uvicorn_options

HALF_HEAD = b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
SLACK = 2.5  # seconds a loaded test machine may add to a deadline


def _classify_ok(url: str) -> bool:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        r = client.post("/v1/classify", json={"task": "senti", "input": "great"})
    return r.status_code == 200


def test_uvicorn_options_carry_the_config():
    config = serve_config(header_timeout_seconds=2, body_timeout_seconds=3, max_header_bytes=999)
    options = uvicorn_options(config)
    assert options["h11_max_incomplete_event_size"] == 999
    protocol = options["http"]
    assert issubclass(protocol, DeadlineH11Protocol)
    assert (protocol.head_timeout, protocol.body_timeout) == (2, 3 + BODY_GRACE_SECONDS)


def test_stalled_heads_are_closed_while_valid_requests_are_answered(strict_server):
    """40 connections that send half a head and stall (no token either) are all closed after the
    1 s head deadline, and a valid request meanwhile answers 200."""
    stalled = [connect(strict_server.url) for _ in range(40)]
    for sock in stalled:
        sock.sendall(HALF_HEAD)
    assert _classify_ok(strict_server.url)
    for sock in stalled:
        received, closed_after = read_until_closed(sock, 1.0 + SLACK)
        sock.close()
        assert closed_after is not None, "a stalled request head was never timed out"
        assert received == b""  # no response: the head never completed


def test_a_trickled_head_is_cut_at_its_deadline(strict_server):
    """The deadline holds from connecting: one header byte every 0.2 s does not extend it."""
    with connect(strict_server.url) as sock:
        sock.sendall(HALF_HEAD + b"X-Slow: ")
        _, closed_after = read_until_closed(sock, 1.0 + SLACK, trickle=b"a")
    assert closed_after is not None and closed_after < 1.0 + SLACK


def test_a_body_no_one_reads_is_cut(strict_server):
    """A request without the token is answered 401 at once; the body it keeps trickling is cut at
    the body deadline (uvicorn's keep-alive timer alone restarts at every byte)."""
    head = HALF_HEAD + b"Content-Length: 100000\r\n\r\n"
    with connect(strict_server.url) as sock:
        sock.sendall(head + b"{")
        received, closed_after = read_until_closed(
            sock, 1.0 + BODY_GRACE_SECONDS + SLACK, trickle=b" "
        )
    assert received.startswith(b"HTTP/1.1 401")
    assert closed_after is not None, "a trickled body after an early answer was never cut"


def test_an_oversized_head_is_refused(strict_server):
    """A header of 8000 bytes over the 4096-byte head limit, sent in one piece (h11's own bound
    only counts an incomplete head) or in two: 431 and the connection closed."""
    head = (
        b"GET /v1/tasks HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\r\nX-Big: "
        + b"a" * 8000
        + b"\r\n\r\n"
    )
    for pieces in ([head], [head[:3000], head[3000:]]):
        with connect(strict_server.url) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.1)
            received, closed_after = read_until_closed(sock, SLACK)
        assert received.startswith(b"HTTP/1.1 431 "), received[:100]
        assert b"request head over the 4096-byte limit" in received
        assert closed_after is not None
    with httpx.Client(base_url=strict_server.url, headers=AUTH, timeout=60) as client:
        fits = client.get("/v1/tasks", headers={"X-Big": "a" * 1000})
    assert fits.status_code == 200


def test_a_head_under_the_limit_passes_with_its_body_in_the_same_read(strict_server):
    """Head and body sent in one piece, 5 KiB together, the head alone under 4 KiB: answered."""
    body = b'{"task": "senti", "input": "great"}' + b" " * 1900
    head = (
        b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n"
        b"X-Pad: " + b"p" * 3000 + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert len(head) < 4096 < len(head + body)
    with connect(strict_server.url) as sock:
        sock.sendall(head + body)
        received, _ = read_until_closed(sock, 30)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
