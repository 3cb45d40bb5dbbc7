"""Prepared task folders: what `write_prepared` writes `load_prepared` reads back unchanged, and
a folder that is not one, or a row without a field, is an error naming the file."""

import json

import pytest

from softprompt.prepared import load_prepared, write_prepared
from softprompt.task_data import load_task
from softprompt.tasks import Example, TaskDataError, load_spec


def test_prepared_examples_read_back_unchanged(toy_task, tmp_path):
    spec = load_spec(toy_task["spec_path"])
    data = load_task(spec, toy_task["data_dir"])
    data["dev"].append(Example("Review: é\nSentiment:", "positive", "g1", "x:1"))
    meta = write_prepared(spec, data, tmp_path / "prepared", {"skipped_rows": ["x:2: bad"]})
    assert load_prepared(tmp_path / "prepared") == data
    written = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert written == meta
    assert meta["label_words"] == spec.label_words and meta["skipped_rows"] == ["x:2: bad"]
    assert meta["counts"] == {split: len(examples) for split, examples in data.items()}
    assert not [p for p in (tmp_path / "prepared").iterdir() if p.name.endswith(".tmp")]


def test_bad_prepared_folders_are_named(tmp_path):
    with pytest.raises(TaskDataError, match="not a prepared task folder"):
        load_prepared(tmp_path)
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text(json.dumps({"input": "x"}) + "\n")
    with pytest.raises(TaskDataError, match=r"train\.jsonl:1: missing field 'target'"):
        load_prepared(tmp_path)
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(TaskDataError, match="split 'train' is empty"):
        load_prepared(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"input": 5, "target": "yes"}', "field 'input' must be text, got int"),
        (b'{"input": "x", "target": null}', "field 'target' must be text, got NoneType"),
        (b'{"input": "x", "target": "yes", "group": {"a": 1}}', "field 'group' must be text"),
        (b'{"input": "x", "target": "yes", "source": 3}', "field 'source' must be text"),
        (b'{"input": "caf\xe9", "target": "yes"}', r"not valid UTF-8 \(byte 0xe9 at column 15\)"),
        (b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "malformed JSON: nested too deeply"),
        (b'{"input": "' + b"x" * 1_000_001 + b'"}', "line longer than 1,000,000 characters"),
    ],
)
def test_prepared_file_faults_name_the_file_and_line(tmp_path, line, message):
    """A prepared split is input to training too, so each row's fields must be text, and faults
    in the file are TaskDataErrors naming it and the line."""
    (tmp_path / "meta.json").write_text("{}")
    good = json.dumps({"input": "x", "target": "yes"}).encode()
    (tmp_path / "dev.jsonl").write_bytes(good + b"\n" + line + b"\n")
    with pytest.raises(TaskDataError, match=r"dev\.jsonl:2: " + message) as err:
        load_prepared(tmp_path)
    assert "\n" not in str(err.value)


def test_a_folder_in_place_of_a_prepared_split_is_an_error(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "dev.jsonl").write_text(json.dumps({"input": "x", "target": "yes"}) + "\n")
    (tmp_path / "train.jsonl").mkdir()
    with pytest.raises(TaskDataError, match=r"train\.jsonl: cannot read: Is a directory"):
        load_prepared(tmp_path)
