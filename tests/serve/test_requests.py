"""Request inputs (softprompt.serve.requests): rendered into the task's template, refused with a
message that names the field."""

from __future__ import annotations

import json

import pytest
from served_tasks import check_answer

from softprompt.serve.config import TaskServing
from softprompt.serve.requests import InputError, render_request
from softprompt.serve.state import ReadOnlyRegistry, load_task_state


def test_plain_text_fills_a_one_field_template(server, tiny_causal, registry):
    r = server.post("/v1/classify", json={"task": "senti", "input": "awful boring plot"})
    assert r.status_code == 200 and not r.json()["truncated"]
    check_answer(tiny_causal, registry, "senti", {"sentence": "awful boring plot"}, r.json())


def test_render_request_fills_the_template_or_names_the_field(tiny_causal, registry):
    view = ReadOnlyRegistry(registry)
    senti = load_task_state(view, TaskServing("senti"), tiny_causal)
    nli = load_task_state(view, TaskServing("nli"), tiny_causal)
    assert render_request(senti, "great", 300) == render_request(senti, {"sentence": "great"}, 300)
    assert "great" in render_request(senti, "great", 300)
    with pytest.raises(InputError, match="'sentence'.*empty"):
        render_request(senti, {"sentence": " "}, 300)
    with pytest.raises(InputError, match="premise"):
        render_request(nli, "one text", 300)
    with pytest.raises(InputError, match="limit is 10"):
        render_request(senti, "word " * 10, 10)


@pytest.mark.parametrize(
    "body, status, words",
    [
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
    ],
)
def test_bad_input_is_refused_with_a_message(server, body, status, words):
    r = server.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    detail = json.dumps(r.json()["detail"])
    for word in words:
        assert word in detail, (word, detail)
