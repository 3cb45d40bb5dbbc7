"""The HTTP layer (softprompt.serve.http): the bearer token guards everything but the probes,
oversized bodies are refused before parsing, and the schema, task list and metrics are served."""

from __future__ import annotations

import json

import httpx
from served_tasks import TOKEN, metric_samples


def test_token_required_except_health(server):
    anonymous = httpx.Client(base_url=server.base_url, timeout=60)
    for method, path in [
        ("POST", "/v1/classify"),
        ("GET", "/metrics"),
        ("GET", "/v1/tasks"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/reload"),
        ("GET", "/nope"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = anonymous.request(
                method, path, headers=headers, json={"task": "senti", "input": "x"}
            )
            assert r.status_code == 401 and "bearer token" in r.text, (method, path, headers)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["tasks"] == {
        "senti": [1],
        "nli": [1],
        "yesno": [1, 2, 3],
    }


def test_openapi_metrics_and_tasks(server):
    schema = server.get("/openapi.json").json()
    paths = {"/v1/classify", "/v1/tasks", "/v1/reload", "/healthz", "/readyz", "/metrics"}
    assert paths <= set(schema["paths"])
    assert "ClassifyRequest" in schema["components"]["schemas"]
    tasks = server.get("/v1/tasks").json()
    assert (
        tasks["nli"]["input_fields"] == ["premise", "hypothesis"]
        and tasks["yesno"]["ensemble"] == 3
    )
    server.post("/v1/classify", json={"task": "senti", "input": "great"})
    senti = (("task", "senti"),)
    classify_ok = (("route", "/v1/classify"), ("status", "200"))
    assert metric_samples(server, "softprompt_predictions_total")[senti] >= 1
    assert metric_samples(server, "softprompt_classify_latency_seconds_count")[senti] >= 1
    assert metric_samples(server, "softprompt_batch_rows_count")[()] >= 1
    assert metric_samples(server, "softprompt_http_requests_total")[classify_ok] >= 1


def test_malformed_and_oversized_bodies(server):
    r = server.post(
        "/v1/classify",
        content=b'{"task": "senti", "input": ',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "json" in r.text.lower()
    big = json.dumps({"task": "senti", "input": "a" * 5000}).encode()
    r = server.post("/v1/classify", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "2048-byte" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 500

    r = server.post("/v1/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert metric_samples(server, "softprompt_errors_total")[(("kind", "body_too_large"),)] >= 2
    assert server.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 200
