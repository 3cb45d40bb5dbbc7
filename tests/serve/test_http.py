"""The HTTP layer (softprompt.serve.http): the bearer token guards everything but the probes
(/readyz shows its details to token holders only), oversized bodies are refused before parsing,
error bodies always serialize, the schema (with its bearer scheme and response models), task
list and metrics are served, and a batch answers or refuses each item on its own, in input
order, from shared forwards."""

from __future__ import annotations

import json

import httpx
from served_tasks import INPUTS, TOKEN, check_answer, metric_samples, serve_config

from softprompt.serve.http import create_app


def test_token_required_except_health(server):
    anonymous = httpx.Client(base_url=server.base_url, timeout=60)
    for method, path in [
        ("POST", "/v1/classify"),
        ("POST", "/v1/classify:batch"),
        ("GET", "/metrics"),
        ("GET", "/v1/tasks"),
        ("POST", "/v1/reload"),
        ("GET", "/nope"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = anonymous.request(
                method, path, headers=headers, json={"task": "senti", "input": "x"}
            )
            assert r.status_code == 401 and "bearer token" in r.text, (method, path, headers)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    # The API's description is public, so a browser can load /docs and then send the token.
    assert "bearer" in anonymous.get("/openapi.json").json()["components"]["securitySchemes"]
    assert anonymous.get("/docs").status_code == 200
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


PROTECTED = [
    ("/v1/classify", "post"),
    ("/v1/classify:batch", "post"),
    ("/v1/tasks", "get"),
    ("/v1/reload", "post"),
    ("/metrics", "get"),
]
# Each JSON route's answer, as its response model names it in the schema.
RESPONSE_MODELS = {
    ("/healthz", "get"): "Health",
    ("/readyz", "get"): "Readiness",
    ("/v1/classify", "post"): "ClassifyResponse",
    ("/v1/classify:batch", "post"): "BatchResponse",
    ("/v1/tasks", "get"): "TaskView",
    ("/v1/reload", "post"): "ReloadOutcome",
}


def test_openapi_declares_the_bearer_scheme_and_every_answer(server):
    """The schema's bearer scheme is listed by each protected route (optional on /readyz, absent
    on /healthz), so /docs can send the token; every JSON route names its response model. An
    open service (no token) declares no scheme."""
    schema = server.get("/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, method in PROTECTED:
        assert schema["paths"][path][method]["security"] == [{"bearer": []}], path
        assert "401" in schema["paths"][path][method]["responses"], path
    assert schema["paths"]["/readyz"]["get"]["security"] == [{}, {"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    for (path, method), model in RESPONSE_MODELS.items():
        answer = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        assert f"#/components/schemas/{model}" in json.dumps(answer["schema"]), path
    item = schema["components"]["schemas"]["BatchRequest"]["properties"]["items"]["items"]
    assert item["title"] == "ClassifyRequest" and item["required"] == ["task", "input"]
    open_schema = create_app(serve_config(token=None)).openapi()
    assert "securitySchemes" not in open_schema.get("components", {})
    assert all("security" not in op for ops in open_schema["paths"].values() for op in ops.values())


def test_answers_follow_their_response_models(server):
    """Fields a route leaves out stay out (no nulls added), and those it sets to null stay."""
    tasks = server.get("/v1/tasks").json()
    assert tasks["yesno"]["ref"] is None and tasks["senti"]["ref"] == "production"
    assert "error" not in tasks["senti"]
    assert server.get("/healthz").json() == {"status": "ok"}
    assert server.post("/v1/reload").json()["senti"] == {"versions": [1], "changed": False}
    answer = server.post("/v1/classify", json={"task": "senti", "input": "great"}).json()
    assert "votes" not in answer and "ok" not in answer


def _batch_items() -> list[dict]:
    """Two inputs of each task, the tasks interleaved."""
    return [{"task": t, "input": INPUTS[t][k]} for k in range(2) for t in ("senti", "nli", "yesno")]


def test_batch_answers_mixed_tasks_in_order_from_one_forward(server, tiny_causal, registry):
    """6 items of three tasks (10 rows with the 3-prompt ensemble): 200, one result per item in
    input order, each as the library answers it, all scored in a single forward."""
    items = _batch_items()
    forwards = metric_samples(server, "softprompt_batch_rows_count")[()]
    nine_to_16 = _rows_between(server, "8.0", "16.0")
    r = server.post("/v1/classify:batch", json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["task"] for x in results] == [item["task"] for item in items]
    for item, result in zip(items, results, strict=True):
        assert result["ok"] is True, result
        check_answer(tiny_causal, registry, item["task"], item["input"], result)
    assert sum(results[2]["votes"].values()) == 3 and "votes" not in results[0]
    assert metric_samples(server, "softprompt_batch_rows_count")[()] == forwards + 1
    assert _rows_between(server, "8.0", "16.0") == nine_to_16 + 1  # the one 10-row forward


def _rows_between(server, low: str, high: str) -> float:
    """Forwards so far with more than `low` and at most `high` rows."""
    buckets = metric_samples(server, "softprompt_batch_rows_bucket")
    return buckets[(("le", high),)] - buckets[(("le", low),)]


# Items a batch refuses one by one: (item, status, words its detail holds).
REFUSED_ITEMS = [
    ({"task": "senti", "input": {"sentense": "a"}}, 422, ["'sentense'", "sentence"]),
    ({"task": "nli", "input": {"premise": "a"}}, 422, ["missing", "'hypothesis'"]),
    ({"task": "nope", "input": "x"}, 404, ["'nope'", "senti"]),
    ({"task": 7, "input": "x"}, 422, ["task"]),
    ({"task": "senti", "input": "x", "extra": 1}, 422, ["extra"]),
    ({"task": "senti"}, 422, ["input", "required"]),
    ("senti: great", 422, ["ClassifyRequest"]),
    ({"task": "senti", "input": "word " * 70}, 422, ["characters", "300"]),
]


def test_a_batch_refuses_bad_items_in_place_and_answers_the_others(server, tiny_causal, registry):
    """8 bad items (REFUSED_ITEMS) between 2 good ones: 200, each bad item refused in its place
    with the status it would get alone and a detail naming the field; the good ones answered."""
    good = [{"task": "senti", "input": "great"}, {"task": "nli", "input": INPUTS["nli"][0]}]
    items = [good[0], *(item for item, _, _ in REFUSED_ITEMS), good[1]]
    r = server.post("/v1/classify:batch", json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(items)
    for result, (item, status, words) in zip(results[1:-1], REFUSED_ITEMS, strict=True):
        assert result["ok"] is False and result["status"] == status, (item, result)
        assert set(result) == {"ok", "status", "detail"}
        for word in words:
            assert word in result["detail"], (item, word, result)
    check_answer(tiny_causal, registry, "senti", {"sentence": "great"}, results[0])
    check_answer(tiny_causal, registry, "nli", INPUTS["nli"][0], results[-1])


def test_a_batch_item_with_unencodable_values_is_refused_alone(server):
    """NaN and a lone surrogate inside items: those items 422 naming the field, the body still
    JSON, the good item answered; a NaN outside the items refuses the whole batch."""
    body = (
        b'{"items": [{"task": "senti", "input": "great"}, '
        b'{"task": "senti", "input": {"sentence": NaN}}, '
        b'{"task": "senti", "input": "great \\ud800"}, '
        b'{"task": "senti", "input": "x", "\\ud800": 1}]}'
    )
    headers = {"Content-Type": "application/json"}
    r = server.post("/v1/classify:batch", content=body, headers=headers)
    assert r.status_code == 200, r.text
    ok, nan, surrogate, key = r.json()["results"]
    assert ok["ok"] is True and ok["label"] in ("negative", "positive")
    assert nan["status"] == 422 and "sentence" in nan["detail"] and "finite" in nan["detail"]
    assert surrogate["status"] == 422 and "Unicode" in surrogate["detail"]
    assert key["status"] == 422 and "NaN" not in r.text
    whole = server.post(
        "/v1/classify:batch",
        content=b'{"items": [{"task": "senti", "input": "great"}], "x": NaN}',
        headers=headers,
    )
    assert whole.status_code == 422 and "x" in json.dumps(whole.json()["detail"])


def test_a_malformed_batch_is_refused_as_a_whole(server):
    """No items, items that are not a list, an unknown key, or more than max_batch_items (12 here):
    422 for the whole request; a body over max_body_bytes: 413."""
    item = {"task": "senti", "input": "great"}
    for body, words in [
        ({"items": []}, ["items", "at least 1"]),
        ({"items": item}, ["items", "list"]),
        ({}, ["items", "required"]),
        ({"items": [item], "task": "senti"}, ["task"]),
        ({"items": [item] * 13}, ["13 items", "at most 12"]),
    ]:
        r = server.post("/v1/classify:batch", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = json.dumps(r.json()["detail"])
        for word in words:
            assert word in detail, (body, word, detail)
    big = {"items": [{"task": "senti", "input": "a" * 250}] * 8}
    assert server.post("/v1/classify:batch", json=big).status_code == 413
    assert server.post("/v1/classify:batch", json={"items": [item] * 8}).status_code == 200
