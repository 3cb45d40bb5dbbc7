"""The inference service, started for real (uvicorn on 127.0.0.1) on the tiny causal model, with
prompts of three tasks in a local registry built here: answers equal the library's own
predictions, alone and in mixed-task batches; bad input is refused; aliases reload."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from softprompt.ensemble import ensemble_scores, majority_vote
from softprompt.registry import open_registry
from softprompt.scoring import label_scores, mixed_label_scores
from softprompt.serve import ServeConfig, ServerThread, TaskServing, create_app

TOKEN = "test-token-1234"
MAX_TOKENS = 64  # the service's max_input_tokens: longer inputs keep their last 64 tokens, as in training
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# name: (template, label words, prompt length); `yesno` is served as a 3-prompt ensemble.
TASKS = {
    "senti": ("Review: {sentence}\nSentiment:", ["negative", "positive"], 4),
    "nli": ("Premise: {premise}\nHypothesis: {hypothesis}\nEntailment, contradiction or neutral?",
            ["entailment", "contradiction", "neutral"], 6),
    "yesno": ("Question: {question}\nAnswer:", ["yes", "no"], 4),
}
INPUTS = {
    "senti": [{"sentence": "the movie was great and lovely"}, {"sentence": "awful boring plot"},
              {"sentence": "quite a story"}],
    "nli": [{"premise": "The fox jumps.", "hypothesis": "A fox moves."},
            {"premise": "the cast was brilliant", "hypothesis": "the acting was terrible"}],
    "yesno": [{"question": "is the quick brown fox lazy"}, {"question": "was the film really boring"}],
}


# ---------------------------------------------------------------- fixtures
def _lineage(lm, task, fingerprint=None):
    template, words, length = TASKS[task]
    return {"task": task, "base_model": lm.name, "base_model_fingerprint": fingerprint or lm.fingerprint, "init": "random_uniform",
            "prompt_length": length, "objective": "lm", "hyperparameters": {}, "dataset_version": None,
            "code_version": None, "metrics": {}, "label_words": words, "template": template, "metric": "accuracy"}


def _prompt(lm, task, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(TASKS[task][2], lm.dim, generator=g) * 2 - 1) * 0.5


def _publish(reg, lm, task, seed, fingerprint=None):
    return reg.publish(task, _prompt(lm, task, seed), _lineage(lm, task, fingerprint))


@pytest.fixture(scope="module")
def registry(tiny_causal, tmp_path_factory):
    reg = open_registry(tmp_path_factory.mktemp("registry"))
    for seed, task in enumerate(TASKS):
        m = _publish(reg, tiny_causal, task, seed)
        reg.promote(task, "production", m.version)
    for seed in (10, 11):
        _publish(reg, tiny_causal, "yesno", seed)  # yesno: versions 1-3, the ensemble
    return reg


def _config(**kw):
    tasks = [TaskServing("senti"), TaskServing("nli"), TaskServing("yesno", ensemble=3)]
    base = dict(registry="unused", tasks=tasks, token=TOKEN, max_wait_ms=300, max_body_bytes=2048,
                max_input_chars=300, max_input_tokens=MAX_TOKENS, poll_seconds=0)
    return ServeConfig(**(base | kw))


@pytest.fixture(scope="module")
def server(tiny_causal, registry):
    app = create_app(_config(), lm=tiny_causal, registry=registry)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client:
        yield client


def _library(lm, reg, task, fields, versions=None):
    """The library's own answer: rank classification (or the ensemble's majority vote)."""
    template, words, _ = TASKS[task]
    ids = lm.encode_input(template.format(**fields).strip(), MAX_TOKENS)[0]
    if versions:
        scores = ensemble_scores(lm, [reg.pull(task, v)[0] for v in versions], [ids], words)  # [N, 1, L]
        return words[int(majority_vote(scores)[0][0])], scores[:, 0].sum(0)
    scores = label_scores(lm, reg.pull(task, "production")[0], [ids], words)[0]
    return words[int(scores.argmax())], scores


def _check(lm, reg, task, fields, answer):
    versions = [1, 2, 3] if task == "yesno" else None
    label, scores = _library(lm, reg, task, fields, versions)
    assert answer["label"] == label, (task, fields, answer)
    assert torch.allclose(torch.tensor([answer["scores"][w] for w in TASKS[task][1]]), scores, atol=1e-4)
    assert answer["versions"] == (versions or [1])


def _metric(client, name, path="/metrics"):
    """{labels tuple: value} of one Prometheus sample name."""
    text = client.get(path).text
    return {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == name}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- scoring
@pytest.mark.parametrize("by_prompt", [True, False])
def test_mixed_label_scores_equal_single_task_scores(tiny_causal, by_prompt):
    """Rows of three tasks (two prompt lengths, three label sets, prompts used by one or two rows)
    scored together, in one batch per prompt or per prompt length, give each task's own label_scores."""
    lm, rows = tiny_causal, []
    prompts = {(task, seed): _prompt(lm, task, seed) for task in INPUTS for seed in (0, 1)}  # shared tensors, as the service's
    for task, examples in INPUTS.items():
        for k, fields in enumerate(examples):
            rows.append((task, prompts[task, k % 2], lm.encode_input(TASKS[task][0].format(**fields), 256)[0]))
    mixed = mixed_label_scores(lm, [r[1] for r in rows], [r[2] for r in rows], [TASKS[r[0]][1] for r in rows], by_prompt=by_prompt)
    for (task, prompt, ids), got in zip(rows, mixed, strict=True):
        assert got.shape == (len(TASKS[task][1]),)
        assert torch.allclose(got, label_scores(lm, prompt, [ids], TASKS[task][1])[0], atol=1e-4)


# ---------------------------------------------------------------- answers
def test_each_task_answers_like_the_library(server, tiny_causal, registry):
    for task, examples in INPUTS.items():
        for fields in examples:
            r = server.post("/v1/classify", json={"task": task, "input": fields})
            assert r.status_code == 200, r.text
            _check(tiny_causal, registry, task, fields, r.json())
    ens = server.post("/v1/classify", json={"task": "yesno", "input": INPUTS["yesno"][0]}).json()
    assert sum(ens["votes"].values()) == 3


def test_mixed_task_batch_answers_like_the_library(server, tiny_causal, registry):
    before = _metric(server, "softprompt_batch_tasks_bucket")
    jobs = [(task, fields) for task, examples in INPUTS.items() for fields in examples]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all inside one 300 ms batching window
        answers = list(pool.map(lambda j: server.post("/v1/classify", json={"task": j[0], "input": j[1]}), jobs))
    for (task, fields), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        _check(tiny_causal, registry, task, fields, r.json())
    after = _metric(server, "softprompt_batch_tasks_bucket")
    le1 = (("le", "1.0"),)
    new_batches = after[(("le", "+Inf"),)] - before[(("le", "+Inf"),)]
    single_task = after[le1] - before[le1]
    assert new_batches >= 1 and single_task < new_batches, "no batch mixed tasks"


def test_plain_text_fills_a_one_field_template(server, tiny_causal, registry):
    r = server.post("/v1/classify", json={"task": "senti", "input": "awful boring plot"})
    assert r.status_code == 200 and not r.json()["truncated"]
    _check(tiny_causal, registry, "senti", {"sentence": "awful boring plot"}, r.json())


def test_long_input_is_truncated_like_the_library(server, tiny_causal, registry):
    fields = {"sentence": "the plot was quite boring and the acting awful but the cast " * 4 + "was great"}
    r = server.post("/v1/classify", json={"task": "senti", "input": fields})
    assert r.status_code == 200 and r.json()["truncated"]
    _check(tiny_causal, registry, "senti", fields, r.json())


# ---------------------------------------------------------------- access, health, metrics, schema
def test_token_required_except_health(server):
    anonymous = httpx.Client(base_url=server.base_url, timeout=60)
    for method, path in [("POST", "/v1/classify"), ("GET", "/metrics"), ("GET", "/v1/tasks"), ("GET", "/openapi.json"),
                         ("POST", "/v1/reload"), ("GET", "/nope")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = anonymous.request(method, path, headers=headers, json={"task": "senti", "input": "x"})
            assert r.status_code == 401 and "bearer token" in r.text, (method, path, headers)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200 and ready.json()["tasks"] == {"senti": [1], "nli": [1], "yesno": [1, 2, 3]}


def test_openapi_metrics_and_tasks(server):
    schema = server.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/tasks", "/v1/reload", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert "ClassifyRequest" in schema["components"]["schemas"]
    tasks = server.get("/v1/tasks").json()
    assert tasks["nli"]["input_fields"] == ["premise", "hypothesis"] and tasks["yesno"]["ensemble"] == 3
    server.post("/v1/classify", json={"task": "senti", "input": "great"})
    assert _metric(server, "softprompt_predictions_total")[(("task", "senti"),)] >= 1
    assert _metric(server, "softprompt_classify_latency_seconds_count")[(("task", "senti"),)] >= 1
    assert _metric(server, "softprompt_batch_rows_count")[()] >= 1
    assert _metric(server, "softprompt_http_requests_total")[(("route", "/v1/classify"), ("status", "200"))] >= 1


def test_metrics_port_needs_no_token_and_closes_with_the_service(tiny_causal, registry):
    port = _free_port()
    app = create_app(_config(metrics_port=port), lm=tiny_causal, registry=registry)
    scrape = f"http://127.0.0.1:{port}/metrics"
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        answer = client.post("/v1/classify", json={"task": "senti", "input": "great"}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        with httpx.Client(timeout=60) as anonymous:  # no Authorization header at all
            r = anonymous.get(scrape)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            senti, yesno = (("task", "senti"),), (("task", "yesno"),)
            assert _metric(anonymous, "softprompt_predictions_total", scrape)[senti] >= 1
            assert _metric(anonymous, "softprompt_prompt_version", scrape)[yesno] == 3
            # The service's own registry, not the process-wide default one (no process_* series).
            assert "process_cpu_seconds_total" not in r.text and "python_gc_" not in r.text
        unauthorized = client.get("/metrics")
        assert unauthorized.status_code == 401 and "bearer token" in unauthorized.text
        assert client.get("/metrics", headers=AUTH).status_code == 200
    with pytest.raises(httpx.TransportError):  # stopped with the service
        httpx.get(scrape, timeout=5)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, status, words", [
    ({"task": "nope", "input": "x"}, 404, ["'nope'", "senti"]),
    ({"task": "senti", "input": ""}, 422, ["empty"]),
    ({"task": "senti", "input": "   "}, 422, ["empty"]),
    ({"task": "senti", "input": {"sentence": ""}}, 422, ["'sentence'", "empty"]),
    ({"task": "senti", "input": "word " * 100}, 422, ["characters", "300"]),
    ({"task": "senti", "input": 5}, 422, ["input"]),
    ({"task": 7, "input": "x"}, 422, ["task"]),
    ({"task": "senti", "input": {"sentence": 5}}, 422, ["'sentence'", "string", "int"]),
    ({"task": "senti", "input": {"sentence": ["a"]}}, 422, ["'sentence'", "list"]),
    ({"task": "nli", "input": {"premise": "a"}}, 422, ["'hypothesis'"]),
    ({"task": "nli", "input": "one text"}, 422, ["premise", "hypothesis"]),
    ({"task": "senti", "input": {"sentense": "a"}}, 422, ["'sentense'", "sentence"]),
    ({"task": "senti"}, 422, ["input"]),
    ({"task": "senti", "input": "x", "extra": 1}, 422, ["extra"]),
])
def test_bad_input_is_refused_with_a_message(server, body, status, words):
    r = server.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    detail = json.dumps(r.json()["detail"])
    for word in words:
        assert word in detail, (word, detail)


def test_malformed_and_oversized_bodies(server):
    r = server.post("/v1/classify", content=b'{"task": "senti", "input": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()
    big = json.dumps({"task": "senti", "input": "a" * 5000}).encode()
    r = server.post("/v1/classify", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "2048-byte" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 500

    r = server.post("/v1/classify", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert _metric(server, "softprompt_errors_total")[(("kind", "body_too_large"),)] >= 2
    assert server.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 200


def test_a_failing_batch_fails_its_requests_not_the_server(server, monkeypatch):
    import softprompt.serve

    def broken(*args, **kwargs):
        raise RuntimeError("simulated model failure")

    monkeypatch.setattr(softprompt.serve, "mixed_label_scores", broken)
    r = server.post("/v1/classify", json={"task": "senti", "input": "great"})
    assert r.status_code == 500 and "simulated model failure" in r.json()["detail"]
    monkeypatch.undo()
    assert server.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 200
    assert server.get("/healthz").status_code == 200


# ---------------------------------------------------------------- hot reload and verification
def test_moved_alias_is_served_without_restart_and_bad_prompts_never(tiny_causal, tmp_path):
    lm, reg = tiny_causal, open_registry(tmp_path)
    reg.promote("senti", "production", _publish(reg, lm, "senti", 0).version)
    reg.promote("nli", "production", _publish(reg, lm, "nli", 1, fingerprint="sha256:" + "0" * 64).version)
    config = _config(tasks=[TaskServing("senti"), TaskServing("nli")], token=None, poll_seconds=0.2, max_wait_ms=1)
    with ServerThread(create_app(config, lm=lm, registry=reg)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        # nli's only prompt was trained on another base model: never served, the rest is.
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "fingerprint" in ready.json()["errors"]["nli"]
        r = client.post("/v1/classify", json={"task": "nli", "input": INPUTS["nli"][0]})
        assert r.status_code == 503 and "nli" in r.json()["detail"]
        fields = {"sentence": "the plot was wonderful"}
        assert client.post("/v1/classify", json={"task": "senti", "input": fields}).json()["versions"] == [1]

        v2 = _publish(reg, lm, "senti", 5)
        reg.promote("senti", "production", v2.version)
        deadline = time.monotonic() + 30
        while client.post("/v1/classify", json={"task": "senti", "input": fields}).json()["versions"] != [2]:
            assert time.monotonic() < deadline, "the poller never picked up the moved alias"
            time.sleep(0.1)
        answer = client.post("/v1/classify", json={"task": "senti", "input": fields}).json()
        _check_version(lm, reg, fields, answer, 2)

        # An alias moved onto a foreign-model prompt is refused; v2 stays.
        reg.promote("senti", "production", _publish(reg, lm, "senti", 6, fingerprint="sha256:" + "1" * 64).version)
        report = client.post("/v1/reload").json()
        assert report["senti"]["versions"] == [2] and "fingerprint" in report["senti"]["error"]
        assert client.post("/v1/classify", json={"task": "senti", "input": fields}).json()["versions"] == [2]

        # An alias moved onto a version whose blob was corrupted in the store is refused too.
        v4 = reg.publish("senti", torch.randn(4, lm.dim), _lineage(lm, "senti"))  # fresh bytes: no verified copy anywhere
        blob = tmp_path / "blobs" / "sha256" / v4.blob_sha256
        blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
        reg.promote("senti", "production", v4.version)
        report = client.post("/v1/reload").json()
        assert report["senti"]["versions"] == [2] and "corrupt" in report["senti"]["error"]
        assert client.post("/v1/classify", json={"task": "senti", "input": fields}).json()["versions"] == [2]
        assert "corrupt" in client.get("/readyz").json()["errors"]["senti"]
        rejected = {dict(k)["task"]: v for k, v in _metric(client, "softprompt_prompt_reloads_total").items()
                    if dict(k)["outcome"] == "rejected"}
        assert rejected["senti"] >= 1 and rejected["nli"] >= 1


def _check_version(lm, reg, fields, answer, version):
    template, words, _ = TASKS["senti"]
    ids = lm.encode_input(template.format(**fields), MAX_TOKENS)[0]
    scores = label_scores(lm, reg.pull("senti", version)[0], [ids], words)[0]
    assert answer["label"] == words[int(scores.argmax())]
    assert torch.allclose(torch.tensor([answer["scores"][w] for w in words]), scores, atol=1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="ensemble"):
        TaskServing("a", ensemble=1)
    with pytest.raises(ValueError, match="twice"):
        _config(tasks=[TaskServing("a"), TaskServing("a")])
    with pytest.raises(ValueError, match="max_batch_size"):
        _config(max_batch_size=0)
    with pytest.raises(ValueError, match="metrics_port"):
        _config(metrics_port=70000)


def test_service_holds_a_read_only_registry_view(tiny_causal, registry):
    service = create_app(_config(), lm=tiny_causal, registry=registry).state.service
    assert not hasattr(service.registry, "publish") and not hasattr(service.registry, "promote")
    assert service.registry.manifest("senti", "production").version == 1


# ---------------------------------------------------------------- the command
def test_serve_command_line_builds_the_config(monkeypatch):
    from softprompt.cli import build_parser
    from softprompt.serve_cli import config_from_args

    argv = ["serve", "--registry", "/r", "--tasks", "sst2,rte,cb", "--alias", "staging", "--ensemble", "rte=3",
            "--ensemble", "cb=1+4", "--token-env", "SP_TEST_TOKEN", "--port", "9000", "--per-task-batches"]
    args = build_parser().parse_args(argv)
    monkeypatch.setenv("SP_TEST_TOKEN", "abc")
    config = config_from_args(args)
    assert config.token == "abc" and not config.mixed_batches and args.port == 9000
    assert [(t.task, t.ref, t.ensemble, t.versions) for t in config.tasks] == [
        ("sst2", "staging", 0, ()), ("rte", "staging", 3, ()), ("cb", "staging", 0, (1, 4))]
    monkeypatch.delenv("SP_TEST_TOKEN")
    with pytest.raises(ValueError, match="SP_TEST_TOKEN"):
        config_from_args(args)
    with pytest.raises(ValueError, match="'qqp'"):
        config_from_args(build_parser().parse_args(["serve", "--registry", "/r", "--tasks", "sst2", "--ensemble", "qqp=3"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--registry", "/r", "--tasks", "sst2", "--ensemble", "sst2"])
    assert config.metrics_port == 0  # off unless asked for
    minimal = ["serve", "--registry", "/r", "--tasks", "sst2"]
    argv = [*minimal, "--host", "0.0.0.0", "--metrics-port", "9090"]
    on = config_from_args(build_parser().parse_args(argv))
    assert (on.metrics_port, on.metrics_host) == (9090, "0.0.0.0")
    with pytest.raises(ValueError, match="--metrics-port 8000"):
        config_from_args(build_parser().parse_args([*minimal, "--metrics-port", "8000"]))


def test_softprompt_serve_command_end_to_end(tiny_causal_dir, tiny_causal, registry):
    import os
    import subprocess
    import sys

    port = _free_port()
    metrics_port = next(p for p in iter(_free_port, None) if p != port)
    env = os.environ | {"SP_SERVE_TOKEN": TOKEN}
    cmd = [sys.executable, "-m", "softprompt.cli", "serve", "--registry", registry.uri, "--model", str(tiny_causal_dir),
           "--tasks", "senti,yesno", "--ensemble", "yesno=3", "--token-env", "SP_SERVE_TOKEN", "--port", str(port),
           "--poll-seconds", "0", "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "softprompt serve never became ready"
                time.sleep(0.3)
            assert client.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 401
            for task in ("senti", "yesno"):
                fields = INPUTS[task][0]
                r = client.post("/v1/classify", json={"task": task, "input": fields}, headers=AUTH)
                assert r.status_code == 200, r.text
                _check(tiny_causal, registry, task, fields, r.json())
            assert client.get("/metrics").status_code == 401
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60)
            assert scraped.status_code == 200
            assert 'softprompt_predictions_total{task="yesno"} 1.0' in scraped.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_load_benchmark_quick(tiny_causal_dir, tmp_path):
    """bench/serve_load.py --quick: the bounded loopback load test runs with no errors in both modes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--quick", "--model", str(tiny_causal_dir), "--out", str(tmp_path), "--requests", "18",
                         "--concurrency", "6", "--max-seconds", "120"])
    saved = json.loads((tmp_path / "serve_load.json").read_text())
    assert saved["summary"] == result["summary"]
    for mode in ("mixed", "per_task"):
        summary = saved["summary"][mode]
        assert summary["ok"] == 18 and summary["errors"] == 0 and summary["throughput_rps"] > 0
        assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    # Per-task batching can only form single-task forwards: never more rows per forward than mixed.
    assert saved["summary"]["per_task"]["mean_rows_per_forward"] <= saved["summary"]["mixed"]["mean_rows_per_forward"]
    assert "| mixed |" in (tmp_path / "serve_load.md").read_text()
