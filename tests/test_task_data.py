"""Reading a task's data into examples: the shipped tasks load, carved splits are reproducible,
and every data error names the file, line and field."""

import json

import pytest

from softprompt.task_data import load_task, render_input
from softprompt.tasks import TaskDataError, load_spec

ALL_TASKS = ["boolq", "cb", "copa", "rte", "wic", "wsc", "multirc", "mrpc", "qqp", "sst2"]


@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_shipped_spec_loads_its_shared_data(name):
    spec = load_spec(name)
    stats = {}
    data = load_task(spec, stats=stats)
    assert data["train"] and data["dev"]
    for examples in data.values():
        assert all(e.target in spec.label_words for e in examples)
        assert all(e.input for e in examples)


def test_boolq_split_is_reproducible_and_disjoint():
    spec = load_spec("boolq")
    a, b = load_task(spec), load_task(spec)
    assert [e.source for e in a["dev"]] == [e.source for e in b["dev"]]
    assert not {e.source for e in a["train"]} & {e.source for e in a["dev"]}
    assert len(a["train"]) + len(a["dev"]) == 3270


def test_qqp_malformed_first_row_is_skipped_and_counted():
    stats = {}
    data = load_task(load_spec("qqp"), stats=stats)
    assert len(stats["skipped_rows"]) == 1 and "train_subset.tsv:1:" in stats["skipped_rows"][0]
    assert len(data["train"]) + len(data["dev"]) == 23496


def test_multirc_keeps_question_options_together():
    data = load_task(load_spec("multirc"))
    assert not {e.group for e in data["train"]} & {e.group for e in data["dev"]}


def test_malformed_json_names_file_and_line(toy_task):
    path = toy_task["data_dir"] / "toy" / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = '{"sentence": "oops", "label": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match=r"train\.jsonl:5: malformed JSON"):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])


def test_unknown_label_lists_legal_ones(toy_task):
    path = toy_task["data_dir"] / "toy" / "dev.jsonl"
    path.write_text(json.dumps({"sentence": "x", "label": 7}) + "\n")
    with pytest.raises(
        TaskDataError,
        match=r"dev\.jsonl:1: field 'label' has unknown label '7'; legal labels: 0, 1",
    ):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])


def test_missing_field_names_file_line_and_field(toy_task):
    path = toy_task["data_dir"] / "toy" / "test.jsonl"
    path.write_text(json.dumps({"label": 1}) + "\n")
    with pytest.raises(TaskDataError, match=r"test\.jsonl:1: missing field 'sentence'"):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])


def test_empty_split_is_an_error(toy_task):
    (toy_task["data_dir"] / "toy" / "dev.jsonl").write_text("\n")
    with pytest.raises(TaskDataError, match="split 'dev' is empty"):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])


def test_render_input():
    spec = load_spec("sst2")
    assert render_input(spec, "fine film", "in") == "Review: fine film\nSentiment:"
    rte = load_spec("rte")
    with pytest.raises(TaskDataError, match="needs a JSON object with fields"):
        render_input(rte, "plain", "input 1")
    assert "Hypothesis: h" in render_input(rte, '{"premise": "p", "hypothesis": "h"}', "in")
