"""Request inputs (softprompt.serve.requests): rendered into the task's template (numbers as their
text, objects only where the template reads a dotted field), refused with a message that names
the field; a batch item is checked on its own, and its refusal never echoes its values."""

from __future__ import annotations

import json

import pytest
from served_tasks import check_answer

from softprompt.serve.config import TaskServing
from softprompt.serve.requests import ClassifyRequest, InputError, check_item, render_request
from softprompt.serve.state import ReadOnlyRegistry, TaskState, load_task_state
from softprompt.tasks import TaskSpec


def test_plain_text_fills_a_one_field_template(client, tiny_causal, registry):
    answer = client.classify("senti", "awful boring plot")
    assert not answer.truncated
    check_answer(tiny_causal, registry, "senti", {"sentence": "awful boring plot"}, answer)


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
        ({"task": "senti", "input": {"sentence": True}}, 422, ["'sentence'", "string", "boolean"]),
        ({"task": "senti", "input": {"sentence": None}}, 422, ["'sentence'", "string", "null"]),
        ({"task": "senti", "input": {"sentence": ["a"]}}, 422, ["'sentence'", "list"]),
        ({"task": "senti", "input": {"sentence": {"a": "great"}}}, 422, ["'sentence'", "object"]),
        ({"task": "nli", "input": {"premise": "a", "hypothesis": False}}, 422, ["'hypothesis'"]),
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


def test_numbers_are_rendered_as_their_text(client, tiny_causal, registry):
    """3 -> "3", 2.5 -> "2.5": the answer equals the one for the same text."""
    for number in (3, 2.5, -7):
        answer = client.classify("senti", {"sentence": number})
        check_answer(tiny_causal, registry, "senti", {"sentence": str(number)}, answer)
    nli = {"premise": "The fox jumps.", "hypothesis": 42}
    answer = client.classify("nli", nli)
    check_answer(tiny_causal, registry, "nli", nli | {"hypothesis": "42"}, answer)


def test_check_item_accepts_a_request_or_names_what_is_wrong():
    """A batch item becomes a ClassifyRequest, or one line naming each bad field without its
    value (neither a lone surrogate nor a secret comes back)."""
    item = check_item({"task": "senti", "input": {"sentence": "great"}})
    assert isinstance(item, ClassifyRequest) and item.input == {"sentence": "great"}
    refused = {
        "input: Field required": {"task": "senti"},
        "task: Input should be a valid string": {"task": 7, "input": "x"},
        "secret: Extra inputs are not permitted": {"task": "s", "input": "x", "secret": "pw1"},
        "numbers must be finite": {"task": "senti", "input": {"sentence": float("nan")}},
        "input is not valid Unicode": {"task": "senti", "input": "a \ud800"},
        "a valid dictionary": ["senti", "great"],
    }
    for words, raw in refused.items():
        detail = check_item(raw)
        assert isinstance(detail, str) and words in detail, (raw, detail)
        assert "pw1" not in detail and "\ud800" not in detail
        detail.encode("utf-8")  # always valid text


def _dotted_state() -> TaskState:
    """A task whose template reads into a nested object ({target.span1_text})."""
    spec = TaskSpec(
        name="wsc",
        format="jsonl",
        splits={},
        template="{text} Does {target.span2_text} mean {target.span1_text}?",
        label_field="label",
        labels={"False": "no", "True": "yes"},
    )
    return TaskState(TaskServing("wsc"), (), (), spec)


def test_objects_only_where_the_template_reads_a_dotted_field():
    """1 good nested input renders; 6 bad ones (a string for the object, an object for a string,
    unknown and missing nested fields, a boolean or a list inside) name the field."""
    state = _dotted_state()
    good = {"text": "Mark told Pete.", "target": {"span1_text": "Mark", "span2_text": "he"}}
    assert render_request(state, good, 300) == "Mark told Pete. Does he mean Mark?"
    bad = [
        ({**good, "target": "Mark"}, "'target' must be an object"),
        ({**good, "text": {"a": "b"}}, "'text' must be a string or a number, got an object"),
        ({**good, "target": {**good["target"], "extra": "x"}}, "unknown.*'target.extra'"),
        ({**good, "target": {"span1_text": "Mark"}}, "missing.*'target.span2_text'"),
        ({**good, "target": {**good["target"], "span1_text": True}}, "'target.span1_text'.*bool"),
        ({**good, "target": {**good["target"], "span2_text": ["he"]}}, "'target.span2_text'.*list"),
    ]
    for fields, message in bad:
        with pytest.raises(InputError, match=message):
            render_request(state, fields, 300)
