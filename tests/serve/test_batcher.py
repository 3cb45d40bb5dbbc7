"""The micro-batcher (softprompt.serve.batcher): rows of several tasks scored together answer like
each task alone, long inputs are truncated as in training, and a failing batch fails only its
own requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from served_tasks import INPUTS, check_answer, metric_samples


def test_mixed_task_batch_answers_like_the_library(server, tiny_causal, registry):
    before = metric_samples(server, "softprompt_batch_tasks_bucket")
    jobs = [(task, fields) for task, examples in INPUTS.items() for fields in examples]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all inside one 300 ms batching window
        answers = list(
            pool.map(
                lambda j: server.post("/v1/classify", json={"task": j[0], "input": j[1]}), jobs
            )
        )
    for (task, fields), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        check_answer(tiny_causal, registry, task, fields, r.json())
    after = metric_samples(server, "softprompt_batch_tasks_bucket")
    le1 = (("le", "1.0"),)
    new_batches = after[(("le", "+Inf"),)] - before[(("le", "+Inf"),)]
    single_task = after[le1] - before[le1]
    assert new_batches >= 1 and single_task < new_batches, "no batch mixed tasks"


def test_long_input_is_truncated_like_the_library(server, tiny_causal, registry):
    fields = {
        "sentence": "the plot was quite boring and the acting awful but the cast " * 4 + "was great"
    }
    r = server.post("/v1/classify", json={"task": "senti", "input": fields})
    assert r.status_code == 200 and r.json()["truncated"]
    check_answer(tiny_causal, registry, "senti", fields, r.json())


def test_a_failing_batch_fails_its_requests_not_the_server(server, monkeypatch):
    import softprompt.serve.batcher

    def broken(*args, **kwargs):
        raise RuntimeError("simulated model failure")

    monkeypatch.setattr(softprompt.serve.batcher, "mixed_label_scores", broken)
    r = server.post("/v1/classify", json={"task": "senti", "input": "great"})
    assert r.status_code == 500 and "simulated model failure" in r.json()["detail"]
    monkeypatch.undo()
    assert server.post("/v1/classify", json={"task": "senti", "input": "great"}).status_code == 200
    assert server.get("/healthz").status_code == 200
