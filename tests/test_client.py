"""The service's Python client (softprompt.client), against the real service on 127.0.0.1:
answers equal the library's own, a batch of mixed tasks answers each item or refuses it in its
place, a 503 or a refused connection is tried again until the service is ready (honouring
Retry-After), and a 4xx (a wrong token, a bad input) is raised at once, never retried."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from served_tasks import INPUTS, TOKEN, check_answer, free_port, metric_samples, publish
from served_tasks import serve_config as base_config

from bench.server_thread import ServerThread
from softprompt.client import (
    Client,
    InvalidInput,
    ItemError,
    NotFound,
    Prediction,
    Readiness,
    ServiceError,
    Unauthorized,
    Unavailable,
    retry_after,
)
from softprompt.registry import open_registry
from softprompt.serve.config import TaskServing
from softprompt.serve.http import create_app


def serve_config(**kw):
    """The test service's config with a short batching wait: these tests send one at a time."""
    return base_config(**({"max_wait_ms": 5} | kw))


@pytest.fixture(scope="module")
def registry(tiny_causal, tmp_path_factory):
    """senti and nli at version 1 (production), yesno at versions 1-3 (the ensemble)."""
    reg = open_registry(tmp_path_factory.mktemp("registry"))
    for seed, task in enumerate(("senti", "nli", "yesno")):
        reg.promote(task, "production", publish(reg, tiny_causal, task, seed).version)
    for seed in (10, 11):
        publish(reg, tiny_causal, "yesno", seed)
    return reg


@pytest.fixture(scope="module")
def served(tiny_causal, registry):
    with ServerThread(create_app(serve_config(), lm=tiny_causal, registry=registry)) as srv:
        yield srv


@pytest.fixture
def client(served):
    with Client(served.url, token=TOKEN, timeout=60, retries=0) as sp:
        yield sp


def requests_answered(client: Client, route: str, status: int) -> float:
    """How many requests of a route the service has answered with `status`."""
    samples = metric_samples(client.http, "softprompt_http_requests_total")
    return samples.get((("route", route), ("status", str(status))), 0)


def test_classify_answers_like_the_library(client, tiny_causal, registry):
    for task, examples in INPUTS.items():
        for fields in examples:
            answer = client.classify(task, fields)
            assert isinstance(answer, Prediction) and answer.task == task
            check_answer(tiny_causal, registry, task, fields, answer)
    ensemble = client.classify("yesno", INPUTS["yesno"][0])
    assert sum(ensemble.votes.values()) == 3 and len(ensemble.prompt_sha256) == 3
    with pytest.raises(AttributeError):  # a frozen answer
        ensemble.label = "maybe"


def test_a_batch_of_mixed_tasks_with_a_refused_item(client, tiny_causal, registry):
    """7 items of three tasks as pairs and mappings, one with a misspelt field and one of an
    unknown task: a Prediction per good item in input order, an ItemError in place of each bad
    one (InvalidInput / NotFound as classify would raise)."""
    items = [
        ("senti", INPUTS["senti"][0]),
        {"task": "nli", "input": INPUTS["nli"][0]},
        ("yesno", INPUTS["yesno"][1]),
        ("senti", {"sentense": "great"}),
        ("nope", "great"),
        ("nli", INPUTS["nli"][1]),
        ("senti", "awful boring plot"),
    ]
    results = client.classify_batch(items)
    assert [type(r) for r in results] == [Prediction] * 3 + [ItemError] * 2 + [Prediction] * 2
    for k in (0, 2, 5):
        task, fields = items[k]
        check_answer(tiny_causal, registry, task, fields, results[k])
    check_answer(tiny_causal, registry, "nli", INPUTS["nli"][0], results[1])
    check_answer(tiny_causal, registry, "senti", {"sentence": "awful boring plot"}, results[6])
    misspelt, unknown = results[3], results[4]
    assert misspelt.status == 422 and "'sentense'" in misspelt.detail
    assert isinstance(misspelt.exception(), InvalidInput)
    assert unknown.status == 404 and isinstance(unknown.exception(), NotFound)
    with pytest.raises(InvalidInput, match="at most 12"):
        client.classify_batch([("senti", "great")] * 13)
    with pytest.raises(InvalidInput, match="at least 1"):
        client.classify_batch([])


def test_4xx_is_raised_at_once_never_retried(served, client):
    """A wrong token (Unauthorized), a bad input (InvalidInput), an unknown task (NotFound) and an
    oversized body (ServiceError 413) each cost one request, with retries=5."""
    cases = [
        ("wrong-token", ("senti", "great"), Unauthorized, 401, "bearer token"),
        (TOKEN, ("senti", {"sentense": "a"}), InvalidInput, 422, "'sentense'"),
        (TOKEN, ("senti", 5), InvalidInput, 422, "input"),
        (TOKEN, ("nope", "a"), NotFound, 404, "'nope'"),
        (TOKEN, ("senti", "a" * 3000), ServiceError, 413, "2048-byte"),
    ]
    for token, (task, fields), error, status, words in cases:
        before = requests_answered(client, "/v1/classify", status)
        sp = Client(served.url, token=token, retries=5, backoff=0.01)
        with sp, pytest.raises(error) as raised:
            sp.classify(task, fields)
        assert raised.value.status == status and words in raised.value.detail
        assert requests_answered(client, "/v1/classify", status) == before + 1


def test_the_token_comes_from_the_environment(served, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_TOKEN", TOKEN)
    with Client(served.url) as sp:
        assert set(sp.tasks()) == {"senti", "nli", "yesno"}
        assert sp.ready() == Readiness(True, {"senti": [1], "nli": [1], "yesno": [1, 2, 3]}, {})
    monkeypatch.delenv("SOFTPROMPT_TOKEN")
    with Client(served.url) as anonymous:
        assert anonymous.ready() == Readiness(True)  # readiness only, without the token
        with pytest.raises(Unauthorized):
            anonymous.tasks()


def test_503_is_retried_until_the_prompt_appears(tiny_causal, tmp_path):
    """nli has no prompt in the registry at first (503); with one retry the client gives up
    (Unavailable, after exactly 2 tries). The prompt is published 1.5 s later and the poller picks
    it up: a client with enough retries gets the answer. ready() reports "not ready" meanwhile
    without retrying."""
    reg = open_registry(tmp_path)
    reg.promote("senti", "production", publish(reg, tiny_causal, "senti", 0).version)
    config = serve_config(tasks=[TaskServing("senti"), TaskServing("nli")], poll_seconds=0.2)
    app = create_app(config, lm=tiny_causal, registry=reg)
    with ServerThread(app) as srv, Client(srv.url, token=TOKEN, retries=1, backoff=0.05) as quick:
        readiness = quick.ready()
        assert not readiness.ready and "nli" in readiness.errors
        with pytest.raises(Unavailable) as raised:
            quick.classify("nli", INPUTS["nli"][0])
        assert raised.value.status == 503 and "nli" in raised.value.detail
        assert requests_answered(quick, "/v1/classify", 503) == 2
        assert quick.classify("senti", "great").versions == (1,)  # the other task serves

        def publish_nli():
            reg.promote("nli", "production", publish(reg, tiny_causal, "nli", 1).version)

        timer = threading.Timer(1.5, publish_nli)
        timer.start()
        try:
            with Client(srv.url, token=TOKEN, retries=30, backoff=0.1, max_backoff=0.4) as patient:
                answer = patient.classify("nli", INPUTS["nli"][0])
                assert answer.versions == (1,) and patient.ready().ready
        finally:
            timer.join()
        assert requests_answered(quick, "/v1/classify", 503) > 3


def test_a_refused_connection_is_retried_until_the_server_answers(tiny_causal, registry):
    """The port is bound but not listening until the service starts 1 s later: the client tries
    again until it answers. With nothing there at all, Unavailable without a status."""
    app = create_app(serve_config(), lm=tiny_causal, registry=registry)
    late = ServerThread(app)  # bound now, listening once entered
    timer = threading.Timer(1.0, late.__enter__)
    start = time.monotonic()
    timer.start()
    try:
        with Client(late.url, token=TOKEN, retries=40, backoff=0.05, max_backoff=0.2) as sp:
            assert sp.classify("senti", "great").label in ("negative", "positive")
        assert time.monotonic() - start >= 1.0
    finally:
        timer.join()
        late.__exit__(None, None, None)
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as nowhere:
        with pytest.raises(Unavailable, match="3 tries") as raised:
            nowhere.ready()
        assert raised.value.status is None


class _BusyOnce(http.server.BaseHTTPRequestHandler):
    """Answers its first request 503 with Retry-After: 1, the next ones 200 with a task list."""

    calls: list[float] = []

    def do_GET(self) -> None:
        self.calls.append(time.monotonic())
        busy = len(self.calls) == 1
        body = json.dumps({"detail": "busy"} if busy else {"senti": {"status": "serving"}})
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


def test_retry_after_is_honoured():
    """A 503 with Retry-After: 1 is tried again after a second, though the backoff is 0; the
    header's HTTP-date form is read too."""
    _BusyOnce.calls.clear()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BusyOnce) as stub:
        thread = threading.Thread(target=stub.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{stub.server_address[1]}"
            with Client(url, retries=1, backoff=0) as sp:
                assert sp.tasks() == {"senti": {"status": "serving"}}
        finally:
            stub.shutdown()
    first, second = _BusyOnce.calls
    assert second - first >= 0.95
    past = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(past) == 0.0  # a date gone by: no wait
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after(httpx.Response(503, headers={"Retry-After": future})) <= 30
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after(httpx.Response(503)) is None


class _Slow(http.server.BaseHTTPRequestHandler):
    """Answers nothing for a second."""

    calls: list[float] = []

    def do_GET(self) -> None:
        self.calls.append(time.monotonic())
        time.sleep(1.0)

    def log_message(self, *args) -> None:
        pass


def test_a_timeout_is_raised_at_once():
    """A service that has not answered within the timeout may still be working: ServiceError
    without a status after the one try, not Unavailable after retries."""
    _Slow.calls.clear()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Slow) as stub:
        thread = threading.Thread(target=stub.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{stub.server_address[1]}"
        try:
            sp = Client(url, timeout=0.2, retries=3, backoff=0)
            with sp, pytest.raises(ServiceError, match="ReadTimeout") as raised:
                sp.tasks()
        finally:
            stub.shutdown()
    assert raised.type is ServiceError and raised.value.status is None
    assert len(_Slow.calls) == 1


def test_the_client_needs_only_httpx():
    """Importing the client loads neither the model stack nor the server nor any orchestrator."""
    code = (
        "import sys, softprompt.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'transformers', 'fastapi', 'uvicorn', 'airflow', 'kfp'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
