"""The guard in front of the app (softprompt.serve.guard): exactly one Authorization header, and
a body that does not arrive in time gets 408 and its connection closed."""

from __future__ import annotations

import httpx
from served_tasks import AUTH, TOKEN, connect, metric_samples, read_until_closed

SLACK = 2.5  # seconds a loaded test machine may add to a deadline


def test_duplicate_authorization_headers_are_refused(server):
    """Two Authorization headers, the good one first or last, or twice: 400 on every path."""
    good, wrong = f"Bearer {TOKEN}", "Bearer wrong"
    body = {"task": "senti", "input": "great"}
    for values in ([wrong, good], [good, wrong], [good, good]):
        headers = [("Authorization", v) for v in values]
        for method, path in [("POST", "/v1/classify"), ("GET", "/v1/tasks"), ("GET", "/readyz")]:
            with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
                r = anonymous.request(method, path, headers=headers, json=body)
            assert r.status_code == 400, (values, path, r.text)
            assert "more than one Authorization header" in r.json()["detail"]
    assert server.post("/v1/classify", json=body).status_code == 200


def test_a_stalled_body_gets_408_and_the_connection_closes(strict_server):
    """Head complete with the token, 10 of 100 body bytes, then silence: 408 after the 1 s body
    deadline, and the server closes the connection."""
    head = (
        b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    )
    with connect(strict_server.url) as sock:
        sock.sendall(head + b'{"task": "')
        received, closed_after = read_until_closed(sock, 1.0 + SLACK)
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"not received within 1 s" in received
    assert closed_after is not None
    with httpx.Client(base_url=strict_server.url, headers=AUTH, timeout=60) as client:
        timeouts = metric_samples(client, "softprompt_errors_total")[(("kind", "body_timeout"),)]
        assert timeouts >= 1
        r = client.post("/v1/classify", json={"task": "senti", "input": "great"})
    assert r.status_code == 200
