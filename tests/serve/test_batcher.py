"""The micro-batcher (softprompt.serve.batcher): rows of several tasks scored together answer like
each task alone, long inputs are truncated as in training, and a bad request (one the tokenizer
refuses, or one whose scoring fails) fails alone: the valid requests batched with it answer as
they would alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from served_tasks import INPUTS, MAX_TOKENS, check_answer, metric_samples


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


def _concurrently(server, bodies: list) -> list:
    """POSTs every body (a dict as JSON, bytes as they are) at once, inside one batching window."""

    def post(body):
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json"}
            return server.post("/v1/classify", content=body, headers=headers)
        return server.post("/v1/classify", json=body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_an_input_the_tokenizer_refuses_fails_alone(server, tiny_causal, registry, monkeypatch):
    """28 valid requests of 3 tasks, sent at once with a lone surrogate ("\\ud800") and with an
    input the tokenizer raises on: each bad one answers 422 saying why, every valid one 200 with
    the answer it gets alone."""
    encode = tiny_causal.encode_input

    def refusing(text, max_tokens):
        if "unencodable" in text:
            raise ValueError("simulated tokenizer refusal")
        return encode(text, max_tokens)

    monkeypatch.setattr(tiny_causal, "encode_input", refusing)
    jobs = [(task, fields) for task, examples in INPUTS.items() for fields in examples] * 4
    bodies = [{"task": task, "input": fields} for task, fields in jobs]
    surrogate = b'{"task": "senti", "input": {"sentence": "great \\ud800"}}'
    refused = {"task": "nli", "input": {"premise": "unencodable", "hypothesis": "a"}}
    answers = _concurrently(server, [*bodies[:14], surrogate, refused, *bodies[14:]])
    bad = [answers.pop(14), answers.pop(14)]
    assert bad[0].status_code == 422 and "Unicode" in bad[0].text, bad[0].text
    assert bad[1].status_code == 422 and "tokenizer cannot encode" in bad[1].text, bad[1].text
    for (task, fields), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        check_answer(tiny_causal, registry, task, fields, r.json())


def test_a_request_that_fails_scoring_fails_alone(server, tiny_causal, registry, monkeypatch):
    """A scoring failure that one input triggers, batched with 14 valid requests of 3 tasks: the
    batch is scored again request by request, only that input answers 500."""
    import softprompt.serve.batcher

    poison = {"sentence": "this input breaks the model"}
    text = f"Review: {poison['sentence']}\nSentiment:"
    poison_ids = tiny_causal.encode_input(text, MAX_TOKENS)[0]
    score = softprompt.serve.batcher.mixed_label_scores
    shared = []  # rows of each call that held the poisoned input

    def failing(lm, prompts, inputs, words):
        if any(list(ids) == poison_ids for ids in inputs):
            shared.append(len(inputs))
            raise RuntimeError("simulated failure on one input")
        return score(lm, prompts, inputs, words)

    monkeypatch.setattr(softprompt.serve.batcher, "mixed_label_scores", failing)
    before = metric_samples(server, "softprompt_errors_total").get((("kind", "batch"),), 0)
    jobs = [(task, fields) for task, examples in INPUTS.items() for fields in examples] * 2
    bodies = [{"task": task, "input": fields} for task, fields in jobs]
    answers = _concurrently(server, [*bodies[:7], {"task": "senti", "input": poison}, *bodies[7:]])
    failed = answers.pop(7)
    assert failed.status_code == 500 and "simulated failure" in failed.json()["detail"]
    for (task, fields), r in zip(jobs, answers, strict=True):
        assert r.status_code == 200, r.text
        check_answer(tiny_causal, registry, task, fields, r.json())
    assert max(shared) > 1 and shared[-1] == 1, "the input never shared a batch, or no retry"
    after = metric_samples(server, "softprompt_errors_total")[(("kind", "batch"),)]
    assert after - before == 1  # one request failed, not a batch of them
