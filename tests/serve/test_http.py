"""The HTTP layer (softprompt.serve.http): the bearer token guards everything but the probes
(/readyz shows its details to token holders only), oversized bodies are refused before parsing,
error bodies always serialize, and the schema, task list and metrics are served."""

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
    ready = anonymous.get("/readyz")  # without the token: readiness only
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    detailed = server.get("/readyz")
    assert detailed.status_code == 200 and detailed.json()["tasks"] == {
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


# Raw JSON bodies no encoder could have written from valid values: each answers 422 with a JSON
# body that names the field. (body, words the detail holds)
UNENCODABLE = [
    (b'{"task": NaN, "input": "great"}', ["task"]),
    (b'{"task": "senti", "input": Infinity}', ["input"]),
    (b'{"task": "senti", "input": {"sentence": NaN}}', ["sentence", "finite"]),
    (b'{"task": "senti", "input": {"sentence": 1e999999}}', ["sentence", "finite"]),
    (b'{"task": "senti", "input": "great", "extra": 1e999999}', ["extra"]),
    (b'{"task": "senti", "input": "great \\ud800"}', ["input", "Unicode"]),
    (b'{"task": "senti", "input": "\xed\xa0\x80"}', ["input", "Unicode"]),  # a surrogate's bytes
    (b'{"task": "senti", "input": {"sentence": "\\udfff great"}}', ["sentence", "Unicode"]),
    (b'{"task": "senti", "input": {"\\ud800": "great"}}', ["a key of input", "Unicode"]),
    (b'{"task": "\\ud800", "input": "great"}', ["task", "Unicode"]),
    (b'{"task": "senti", "input": "great", "\\ud800": 1}', ["unicode"]),
]


def test_unencodable_values_answer_422_with_a_json_body(server):
    """11 bodies with NaN, infinities or lone surrogates: 422 whose JSON names the field and never
    echoes the value (the server's own error handler could not encode it)."""
    for body, words in UNENCODABLE:
        r = server.post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
        detail = json.dumps(r.json()["detail"])
        for word in words:
            assert word.lower() in detail.lower(), (body, word, detail)
        assert "NaN" not in r.text and "Infinity" not in r.text and '"input": ' not in detail
    assert server.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 200


def test_tasks_list_every_served_task_with_its_status(server):
    tasks = server.get("/v1/tasks").json()
    assert set(tasks) == {"senti", "nli", "yesno"}
    assert {t["status"] for t in tasks.values()} == {"serving"}
    assert tasks["senti"]["versions"] == [1] and "error" not in tasks["senti"]


def test_one_task_that_cannot_be_described_does_not_fail_the_list(server, monkeypatch):
    """describe() raising for nli: GET /v1/tasks still answers 200, nli with status "error"."""
    from softprompt.serve.state import TaskState

    describe = TaskState.describe

    def broken(self):
        if self.spec.name == "nli":
            raise RuntimeError("simulated broken description")
        return describe(self)

    monkeypatch.setattr(TaskState, "describe", broken)
    r = server.get("/v1/tasks")
    assert r.status_code == 200, r.text
    views = r.json()
    assert views["nli"]["status"] == "error" and "simulated" in views["nli"]["error"]
    assert views["senti"]["status"] == views["yesno"]["status"] == "serving"
