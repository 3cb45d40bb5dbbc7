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
