"""The service (softprompt.serve.service): answers equal the library's own predictions (single
prompts and a majority-vote ensemble), aliases reload without a restart, unverifiable prompts and
unusable manifests are never served (that task answers 503, the others are unaffected), a task's
error clears once it recovers, and the token-free metrics listener lives and dies with the
service."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from served_tasks import (
    AUTH,
    INPUTS,
    MAX_TOKENS,
    TASKS,
    UNUSABLE,
    TamperedRegistry,
    check_answer,
    free_port,
    lineage,
    metric_samples,
    publish,
    serve_config,
)

from bench.server_thread import ServerThread
from softprompt.registry import open_registry
from softprompt.scoring import label_scores
from softprompt.serve.config import TaskServing
from softprompt.serve.http import create_app


def test_each_task_answers_like_the_library(server, tiny_causal, registry):
    for task, examples in INPUTS.items():
        for fields in examples:
            r = server.post("/v1/classify", json={"task": task, "input": fields})
            assert r.status_code == 200, r.text
            check_answer(tiny_causal, registry, task, fields, r.json())
    ens = server.post("/v1/classify", json={"task": "yesno", "input": INPUTS["yesno"][0]}).json()
    assert sum(ens["votes"].values()) == 3


def test_metrics_port_needs_no_token_and_closes_with_the_service(tiny_causal, registry):
    port = free_port()
    app = create_app(serve_config(metrics_port=port), lm=tiny_causal, registry=registry)
    scrape = f"http://127.0.0.1:{port}/metrics"
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        answer = client.post("/v1/classify", json={"task": "senti", "input": "great"}, headers=AUTH)
        assert answer.status_code == 200, answer.text
        with httpx.Client(timeout=60) as anonymous:  # no Authorization header at all
            r = anonymous.get(scrape)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            senti, yesno = (("task", "senti"),), (("task", "yesno"),)
            assert metric_samples(anonymous, "softprompt_predictions_total", scrape)[senti] >= 1
            assert metric_samples(anonymous, "softprompt_prompt_version", scrape)[yesno] == 3
            # The service's own registry, not the process-wide default one (no process_* series).
            assert "process_cpu_seconds_total" not in r.text and "python_gc_" not in r.text
        unauthorized = client.get("/metrics")
        assert unauthorized.status_code == 401 and "bearer token" in unauthorized.text
        assert client.get("/metrics", headers=AUTH).status_code == 200
    with pytest.raises(httpx.TransportError):  # stopped with the service
        httpx.get(scrape, timeout=5)


def test_moved_alias_is_served_without_restart_and_bad_prompts_never(tiny_causal, tmp_path):
    lm, reg = tiny_causal, open_registry(tmp_path)
    reg.promote("senti", "production", publish(reg, lm, "senti", 0).version)
    reg.promote(
        "nli", "production", publish(reg, lm, "nli", 1, fingerprint="sha256:" + "0" * 64).version
    )
    config = serve_config(
        tasks=[TaskServing("senti"), TaskServing("nli")],
        token=None,
        poll_seconds=0.2,
        max_wait_ms=1,
    )
    with (
        ServerThread(create_app(config, lm=lm, registry=reg)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as client,
    ):
        # nli's only prompt was trained on another base model: never served, the rest is.
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "fingerprint" in ready.json()["errors"]["nli"]
        r = client.post("/v1/classify", json={"task": "nli", "input": INPUTS["nli"][0]})
        assert r.status_code == 503 and "nli" in r.json()["detail"]
        fields = {"sentence": "the plot was wonderful"}
        assert _senti_answer(client, fields)["versions"] == [1]

        v2 = publish(reg, lm, "senti", 5)
        reg.promote("senti", "production", v2.version)
        deadline = time.monotonic() + 30
        while _senti_answer(client, fields)["versions"] != [2]:
            assert time.monotonic() < deadline, "the poller never picked up the moved alias"
            time.sleep(0.1)
        answer = _senti_answer(client, fields)
        _check_version(lm, reg, fields, answer, 2)

        # An alias moved onto a foreign-model prompt is refused; v2 stays.
        reg.promote(
            "senti",
            "production",
            publish(reg, lm, "senti", 6, fingerprint="sha256:" + "1" * 64).version,
        )
        report = client.post("/v1/reload").json()
        assert report["senti"]["versions"] == [2] and "fingerprint" in report["senti"]["error"]
        assert _senti_answer(client, fields)["versions"] == [2]

        # An alias moved onto a version whose blob was corrupted in the store is refused too.
        # Fresh bytes: no verified copy anywhere.
        v4 = reg.publish("senti", torch.randn(4, lm.dim), lineage(lm, "senti"))
        blob = tmp_path / "blobs" / "sha256" / v4.blob_sha256
        blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
        reg.promote("senti", "production", v4.version)
        report = client.post("/v1/reload").json()
        assert report["senti"]["versions"] == [2] and "corrupt" in report["senti"]["error"]
        assert _senti_answer(client, fields)["versions"] == [2]
        assert "corrupt" in client.get("/readyz").json()["errors"]["senti"]
        rejected = {
            dict(k)["task"]: v
            for k, v in metric_samples(client, "softprompt_prompt_reloads_total").items()
            if dict(k)["outcome"] == "rejected"
        }
        assert rejected["senti"] >= 1 and rejected["nli"] >= 1


def _senti_answer(client, fields) -> dict:
    return client.post("/v1/classify", json={"task": "senti", "input": fields}).json()


def _check_version(lm, reg, fields, answer, version):
    template, words, _ = TASKS["senti"]
    ids = lm.encode_input(template.format(**fields), MAX_TOKENS)[0]
    scores = label_scores(lm, reg.pull("senti", version)[0], [ids], words)[0]
    assert answer["label"] == words[int(scores.argmax())]
    assert torch.allclose(torch.tensor([answer["scores"][w] for w in words]), scores, atol=1e-4)


def test_a_task_with_an_unusable_manifest_answers_503_and_the_others_serve(tiny_causal, registry):
    """A registry object answering 8 tasks with unusable manifests (UNUSABLE): each of them 503
    naming the field, senti and nli 200 as the library answers, GET /v1/tasks 200 listing every
    task with its status, /readyz 503 with each refusal."""
    bad = {task: changes for task, (changes, _) in UNUSABLE.items()}
    tasks = [TaskServing("senti"), TaskServing("nli"), *(TaskServing(t) for t in bad)]
    config = serve_config(tasks=tasks, max_wait_ms=1)
    app = create_app(config, lm=tiny_causal, registry=TamperedRegistry(registry, bad))
    with (
        ServerThread(app) as srv,
        httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client,
    ):
        for task, (_, field) in UNUSABLE.items():
            r = client.post("/v1/classify", json={"task": task, "input": "great"})
            assert r.status_code == 503, (task, r.text)
            assert f"task {task} version 1" in r.json()["detail"] and field in r.json()["detail"]
        for task in ("senti", "nli"):
            r = client.post("/v1/classify", json={"task": task, "input": INPUTS[task][0]})
            assert r.status_code == 200, r.text
            check_answer(tiny_causal, registry, task, INPUTS[task][0], r.json())
        listed = client.get("/v1/tasks")
        assert listed.status_code == 200, listed.text
        views = listed.json()
        assert views["senti"]["status"] == "serving" and views["nli"]["versions"] == [1]
        for task, (_, field) in UNUSABLE.items():
            assert views[task]["status"] == "unavailable" and field in views[task]["error"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and set(ready.json()["errors"]) == set(UNUSABLE)


def test_readyz_errors_clear_when_the_task_recovers(tiny_causal, tmp_path):
    """An alias moved onto a foreign-model prompt leaves an error (shown with the token only); once
    the alias is back on the served version, the next reload clears it."""
    lm, reg = tiny_causal, open_registry(tmp_path)
    good = publish(reg, lm, "senti", 0)
    reg.promote("senti", "production", good.version)
    config = serve_config(tasks=[TaskServing("senti")], max_wait_ms=1)
    with (
        ServerThread(create_app(config, lm=lm, registry=reg)) as srv,
        httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as client,
        httpx.Client(base_url=srv.url, timeout=60) as anonymous,
    ):
        assert client.get("/readyz").json() == {
            "ready": True,
            "tasks": {"senti": [1]},
            "errors": {},
        }
        foreign = publish(reg, lm, "senti", 1, fingerprint="sha256:" + "1" * 64)
        reg.promote("senti", "production", foreign.version)
        assert "fingerprint" in client.post("/v1/reload").json()["senti"]["error"]
        assert "fingerprint" in client.get("/readyz").json()["errors"]["senti"]
        assert anonymous.get("/readyz").json() == {"ready": True}  # no error text, no paths
        assert "fingerprint" in client.get("/v1/tasks").json()["senti"]["error"]
        reg.promote("senti", "production", good.version)
        report = client.post("/v1/reload").json()
        assert report["senti"] == {"versions": [1], "changed": False}
        assert client.get("/readyz").json()["errors"] == {}
        assert "error" not in client.get("/v1/tasks").json()["senti"]
