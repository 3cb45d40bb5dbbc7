"""Reading a task's data into examples: the shipped tasks load, carved splits are reproducible,
and every data error names the file, line and field."""

import json

import pytest

from softprompt.task_data import load_task, load_task_from_hub, render_input
from softprompt.tasks import TaskDataError, load_spec, parse_spec

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


def _toy_train(toy_task, lines: list[bytes]) -> None:
    """Replaces the toy task's train file by `lines` (bytes, one per line)."""
    (toy_task["data_dir"] / "toy" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def _row(sentence: str = "a fine film", label: int = 1) -> bytes:
    return json.dumps({"sentence": sentence, "label": label}).encode()


@pytest.mark.parametrize(
    ("value", "rendered"),
    [('"text"', "text"), ("5", "5"), ("-2.5", "-2.5"), ("1e3", "1000.0")],
)
def test_template_fields_render_text_and_numbers(toy_task, value, rendered):
    _toy_train(toy_task, [b'{"sentence": ' + value.encode() + b', "label": 1}'])
    data = load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])
    assert data["train"][0].input == f"Review: {rendered}\nSentiment:"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ('{"a": 1}', "an object"),
        ("[1, 2]", "a list"),
        ("null", "null"),
        ("true", "a boolean"),
        ("NaN", "the number nan"),
        ("Infinity", "the number inf"),
    ],
)
def test_template_fields_that_are_not_text_or_numbers_are_refused(toy_task, value, kind):
    """A Python repr such as "{'a': 1}" or "None" would otherwise be the model's input."""
    _toy_train(toy_task, [_row(), b'{"sentence": ' + value.encode() + b', "label": 1}'])
    with pytest.raises(TaskDataError, match=rf"train\.jsonl:2: field 'sentence' is {kind}; "):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])
    with pytest.raises(TaskDataError, match=rf"^in: field 'sentence' is {kind}; "):
        render_input(load_spec("sst2"), '{"sentence": ' + value + "}", "in")


DEEP = b'{"sentence": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": 1}'


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [_row(), _row(), b'{"sentence": "caf\xe9", "label": 1}'],
            r":3: not valid UTF-8 \(byte 0xe9",
        ),
        ([_row(), b'{"sentence": "\xc3', _row()], r":2: not valid UTF-8 \(byte 0xc3"),
        ([_row()] * 3000 + [b"\xff" + _row()], r":3001: not valid UTF-8 \(byte 0xff at column 1\)"),
        ([_row(), DEEP], ":2: malformed JSON: nested too deeply"),
        ([b'{"sentence": "x", "label": ' + b"1" * 5000 + b"}"], ":1: malformed JSON: Exceeds"),
        ([_row(), _row("x" * 1_000_001)], ":2: line longer than 1,000,000 characters"),
        ([b"[1, 2]"], ":1: expected a JSON object, got list"),
        ([b'{"sentence": "x", "label": 1, "group": {"a": 1}}'], ":1: field 'group' must be text"),
        ([b'{"sentence": "x", "label": {"k": "' + b"v" * 5000 + b'"}}'], ":1: field 'label' has"),
    ],
)
def test_data_file_faults_name_the_file_and_line(toy_task, lines, message):
    """Bad bytes, deep nesting, huge numbers and runaway lines are one-line TaskDataErrors."""
    _toy_train(toy_task, lines)
    with pytest.raises(TaskDataError, match=r"train\.jsonl" + message) as err:
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_folder_in_place_of_a_data_file_is_named(toy_task):
    path = toy_task["data_dir"] / "toy" / "train.jsonl"
    path.unlink()
    path.mkdir()
    with pytest.raises(TaskDataError, match=r"train\.jsonl: cannot read: Is a directory"):
        load_task(load_spec(toy_task["spec_path"]), toy_task["data_dir"])


def test_deep_json_input_is_refused():
    spec = load_spec("sst2")
    with pytest.raises(TaskDataError, match="^input 1: malformed JSON: nested too deeply"):
        render_input(spec, DEEP.decode(), "input 1")


def _tsv_task(tmp_path, lines: list[str]):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "train.tsv").write_text("\n".join(["sentence\tlabel", *lines]) + "\n")
    spec = parse_spec(
        {
            "name": "t",
            "format": "tsv",
            "splits": {"train": "t/train.tsv"},
            "template": "{sentence}",
            "label_field": "label",
            "labels": {"0": "no", "1": "yes"},
        },
        "t.yaml",
    )
    return spec


def test_tsv_fields_beyond_the_csv_default_limit_load(tmp_path):
    """A 200,000-character field (over csv's 131,072 default) is read; a line over the line
    limit is an error naming the file and line."""
    spec = _tsv_task(tmp_path, ["short\t0", "x" * 200_000 + "\t1"])
    examples = load_task(spec, tmp_path)["train"]
    assert [len(e.input) for e in examples] == [5, 200_000]
    (tmp_path / "t" / "train.tsv").write_text(f"sentence\tlabel\nok\t1\n{'x' * 1_000_001}\t1\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv:3: line longer than 1,000,000"):
        load_task(spec, tmp_path)


def test_tsv_faults_name_the_file_and_line(tmp_path):
    spec = _tsv_task(tmp_path, ["ok\t0", "also ok\t1", "three\tfields\t1"])
    with pytest.raises(TaskDataError, match=r"train\.tsv:4: expected 2 tab-separated fields"):
        load_task(spec, tmp_path)
    (tmp_path / "t" / "train.tsv").write_bytes(b"sentence\tlabel\nok\t0\nbad \xff\t1\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv:3: not valid UTF-8 \(byte 0xff at col"):
        load_task(spec, tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"passage": {"text": "p", "questions": [{"question": "q", "answers": ["a"]}]}},
            "not passage.questions",
        ),
        ({"passage": {"text": "p", "questions": "q"}}, "not passage.questions"),
        ({"passage": {"text": "p", "questions": [{"question": "q"}]}}, "lacks field 'answers'"),
        (
            {
                "passage": {
                    "text": ["p"],
                    "questions": [{"question": "q", "answers": [{"text": "a", "label": 1}]}],
                }
            },
            "field 'passage' is a list",
        ),
    ],
)
def test_multirc_row_faults_name_the_file_and_line(tmp_path, row, message):
    spec = load_spec("multirc")
    (tmp_path / "multirc").mkdir()
    for name in ("train", "val"):
        (tmp_path / "multirc" / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(TaskDataError, match=r"multirc/train\.jsonl:1: .*" + message):
        load_task(spec, tmp_path)


def test_hub_rows_become_examples_by_the_same_rules(monkeypatch):
    """The hub source (needs internet, so `datasets.load_dataset` is stood in for here by rows of
    the same shape) yields the examples local files would, and names the hub split and row of a
    bad one."""
    import datasets

    spec = load_spec("sst2")
    calls = []

    def rows(path, name, split):
        calls.append((path, name, split))
        if split == "validation":
            return [{"sentence": "a gripping film", "label": 1, "idx": 0}]
        return [{"sentence": "dull", "label": 0, "idx": 0}, {"sentence": "odd", "label": 5}]

    monkeypatch.setattr(datasets, "load_dataset", rows)
    spec.hub = {"path": "glue", "name": "sst2", "splits": {"test": "validation"}}
    data = load_task_from_hub(spec)
    assert calls == [("glue", "sst2", "validation")]
    assert [(e.input, e.target, e.source) for e in data["test"]] == [
        ("Review: a gripping film\nSentiment:", "positive", "glue/sst2[validation]:0")]
    spec.hub["splits"] = {"train": "train"}
    with pytest.raises(TaskDataError, match=r"glue/sst2\[train\]:1: field 'label' has unknown "
                                            r"label '5'"):
        load_task_from_hub(spec)
