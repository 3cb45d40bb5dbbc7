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


def _spec(**changes) -> dict:
    """A valid spec dict with `changes` applied (a None value drops the field)."""
    raw = {
        "name": "t",
        "format": "jsonl",
        "splits": {"train": "t/train.jsonl", "test": "t/test.jsonl"},
        "template": "Review: {sentence}\nSentiment:",
        "label_field": "label",
        "labels": {"0": "negative", "1": "positive"},
    } | changes
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"0": "yes", "1": "yes"}, r"\['yes'\] name more than one label"),
        ({"0": True, "1": False}, "must be a string, got bool .*quote the word"),
        ({"0": None, "1": "yes"}, "must be a string, got NoneType .*quote the word"),
        ({"0": 0, "1": 1}, "must be a string, got int"),
        ({"0": "", "1": "yes"}, "empty or blank"),
        ({"0": "   ", "1": "yes"}, "empty or blank"),
        ({"0": " no", "1": "yes"}, "surrounding whitespace"),
        ({"0": "no"}, "at least two"),
        ({}, "at least two"),
        ({"0": "n" * 5000, "1": "yes"}, "at most 100"),
        ({1: "no", "1": "yes"}, "two raw labels are both read as '1'"),
        ({True: "no", "true": "yes"}, "two raw labels are both read as 'true'"),
        ({None: "no", "1": "yes"}, "raw label None must be text or a number"),
    ],
)
def test_label_words_follow_the_verbalizer_rules(labels, message):
    """Two labels sharing a word would train a one-class task; blank or non-text words break
    ranking. Each is refused naming the spec file and field, before any word becomes text."""
    with pytest.raises(TaskDataError, match=r"^x\.yaml: field 'labels': .*" + message) as err:
        parse_spec(_spec(labels=labels), "x.yaml")
    assert "\n" not in str(err.value) and len(str(err.value)) < 500


def test_unquoted_yes_no_in_a_spec_file_get_the_quoting_hint(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\nformat: jsonl\nsplits: {train: t/train.jsonl}\ntemplate: '{q}'\n"
        "label_field: label\nlabels: {0: no, 1: yes}\n"
    )
    with pytest.raises(TaskDataError, match=r"t\.yaml: field 'labels': .*got bool .*quote"):
        load_spec(path)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Review: {sentence", "does not parse"),
        ("Review: sentence}", "does not parse"),
        ("{}", "positional field"),
        ("{0}", "positional field"),
        ("{sentence!r}", "conversion or format spec"),
        ("{sentence:>100000000}", "conversion or format spec"),
        ("{rows[0]}", "no indexing"),
        ("{target..x}", "no indexing"),
        ("no fields at all", "names no input field"),
        ("{" + "x" * 10_000, "does not parse"),
    ],
)
def test_bad_templates_name_the_spec_field(template, message):
    with pytest.raises(TaskDataError, match=r"^x\.yaml: field 'template'.*" + message) as err:
        parse_spec(_spec(template=template), "x.yaml")
    assert len(str(err.value)) < 500  # the template is not echoed in full


def test_fields_follow_the_verbalizer_rules():
    spec = parse_spec(_spec(template="{text} '{target.span2_text}' {text}"), "x.yaml")
    assert spec.fields() == ["text", "target.span2_text", "text"]
    spec.template = "{text!r}"
    with pytest.raises(ValueError, match="conversion"):
        spec.fields()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"splits": ["t/train.jsonl"]}, "field 'splits' must be dict"),
        ({"splits": {"train": 5}}, r"field 'splits\.train' must be a non-empty string"),
        ({"splits": {"train": ""}}, r"field 'splits\.train' must be a non-empty string"),
        ({"splits": {"valid": "v.jsonl"}}, "field 'splits' has unknown split 'valid'"),
        ({"label_field": ""}, "field 'label_field' is empty"),
        ({"label_field": 3}, "field 'label_field' must be str"),
        ({"metric": "f1"}, "metric f1 needs 'positive_label'"),
        (
            {"metric": "f1", "positive_label": True},
            "'positive_label' must be str, got bool .*quote",
        ),
        ({"positive_label": "maybe"}, "field 'positive_label' must be one of"),
        ({"description": 5}, "field 'description' must be str"),
        ({"skip_malformed_rows": "no"}, "field 'skip_malformed_rows' must be bool"),
        ({"tsv": [1]}, "field 'tsv' must be dict"),
        ({"tsv": {"colums": ["a"]}}, r"field 'tsv' has unknown keys \['colums'\]"),
        ({"tsv": {"columns": "a,b"}}, r"field 'tsv\.columns' must be list"),
        ({"tsv": {"columns": ["a", 1]}}, r"field 'tsv\.columns' must be a list of column names"),
        ({"tsv": {"columns": ["a", "a"]}}, r"field 'tsv\.columns' names a column twice"),
        ({"tsv": {"header": "no"}}, r"field 'tsv\.header' must be bool"),
        ({"carve_dev": [0.1]}, "field 'carve_dev' must be dict"),
        ({"carve_dev": {"fraction": True}}, r"'carve_dev\.fraction' must be in \(0, 1\)"),
        ({"carve_dev": {"fraction": 1.5}}, r"'carve_dev\.fraction' must be in \(0, 1\)"),
        ({"carve_dev": {"fraction": 0.1, "seed": "x"}}, r"'carve_dev\.seed' must be an integer"),
        ({"carve_dev": {"fraction": 0.1, "from": "dev"}}, r"'carve_dev\.from' must name a split"),
        ({"carve_dev": {"fraction": 0.1, "sed": 1}}, r"'carve_dev' has unknown keys \['sed'\]"),
        ({"hub": "glue"}, "field 'hub' must be dict"),
        ({"hub": {"name": "sst2"}}, r"field 'hub\.path' must be a dataset name"),
        ({"hub": {"path": "glue", "name": 2}}, r"field 'hub\.name' must be str"),
        ({"hub": {"path": "glue", "splits": {"train": 1}}}, r"'hub\.splits\.train' must be a non"),
    ],
)
def test_other_fields_are_type_checked(changes, message):
    """A field of the wrong type is refused when the spec is read, not where it is used."""
    with pytest.raises(TaskDataError, match=r"^x\.yaml: .*" + message):
        parse_spec(_spec(**changes), "x.yaml")


def test_valid_optional_fields_and_digest():
    spec = parse_spec(
        _spec(
            format="tsv",
            tsv={"header": False, "columns": ["sentence", "label"]},
            carve_dev={"from": "train", "fraction": 0.1, "seed": 3},
            hub={"path": "glue", "name": "sst2", "splits": {"train": "train"}},
            labels={0: "negative", "1": "positive"},  # keys YAML reads as int and as text
            metric="f1",
            positive_label="positive",
            description=None,
        ),
        "x.yaml",
    )
    assert spec.labels == {"0": "negative", "1": "positive"} and spec.description == ""
    assert (spec.tsv_columns, spec.tsv_header, spec.carve_dev["seed"]) == (
        ["sentence", "label"],
        False,
        3,
    )
    assert len(spec.digest) == 64


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: t\nformat: jsonl\ntemplate: '\xff{q}'\n", r"t\.yaml:3: not valid UTF-8"),
        (b"- name: t\n- format: jsonl\n", r"t\.yaml: a task spec must be a mapping, got list"),
        (b"name: t\nformat: [jsonl\nlabels: {}\n", r"t\.yaml:\d+: invalid YAML: "),
        (b"name: t\n\tformat: jsonl\n", r"t\.yaml:\d+: invalid YAML: "),
        (b"name: " + b"[" * 20_000 + b"]" * 20_000, r"t\.yaml: invalid YAML: nested too deeply"),
        (b"name: t\x00\n", r"t\.yaml: invalid YAML: "),
    ],
)
def test_spec_file_errors_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "t.yaml"
    path.write_bytes(content)
    with pytest.raises(TaskDataError, match=message) as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_a_folder_named_like_a_spec_is_not_found(tmp_path):
    (tmp_path / "t.yaml").mkdir()
    with pytest.raises(TaskDataError, match="task spec not found"):
        load_spec(tmp_path / "t.yaml")
