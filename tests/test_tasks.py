"""Task specs: validation errors name the spec file and field, unknown tasks list the known ones."""

import pytest

from softprompt.tasks import TaskDataError, load_spec, parse_spec


def test_spec_validation_names_the_field():
    with pytest.raises(TaskDataError, match="x.yaml: field 'metric' must be one of"):
        parse_spec(
            {
                "name": "a",
                "format": "jsonl",
                "splits": {},
                "template": "{a}",
                "label_field": "l",
                "labels": {"0": "no"},
                "metric": "bleu",
            },
            "x.yaml",
        )
    with pytest.raises(TaskDataError, match="x.yaml: missing field 'template'"):
        parse_spec(
            {"name": "a", "format": "jsonl", "splits": {}, "label_field": "l", "labels": {}},
            "x.yaml",
        )


def test_unknown_task_lists_available(tmp_path):
    with pytest.raises(TaskDataError, match="available: .*sst2"):
        load_spec("nope")
