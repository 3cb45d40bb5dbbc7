"""Drafting a spec from a data file guesses its format, header line, label column and values,
and text columns, gives placeholder label words, and names the split files."""

import json

import pytest

from softprompt.data_source import parse_spec_text
from softprompt.task_data import load_task
from softprompt.task_sniff import (
    draft_spec,
    has_header,
    label_words,
    sniff_data,
    spec_splits,
)
from softprompt.tasks import TaskDataError

SENTENCES = ["the film was great fun", "awful, just awful.", "a lovely story (really)",
             "boring and far too long", "what a brilliant cast!", "dreadful acting"]


def _write(path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([["sentence", "label"], ["a fine film", "1"], ["dull", "0"]], True),
        ([["a fine film", "1"], ["dull", "0"], ["great", "1"]], False),
        # Word labels: "label" never appears again in its column, so it is a name.
        ([["text", "label"], ["good", "positive"], ["bad", "negative"], ["ok", "positive"]],
         True),
        ([["good film", "positive"], ["bad", "negative"], ["fine", "positive"]], False),
        # GLUE's MRPC header: spaces and '#' in names, numbers below.
        ([["Quality", "#1 ID", "#1 String"], ["1", "702876", "Amrozi accused his brother"]],
         True),
        ([["sentence", "label"]], False),  # a lone row names nothing
    ],
)
def test_a_header_is_a_row_of_identifiers_unlike_the_rows_below(rows, expected):
    assert has_header(rows) is expected


def test_a_headerless_tsv_gets_named_columns(tmp_path):
    path = _write(tmp_path / "t" / "train.tsv",
                  [f"{i}\t{s}\t{i % 2}" for i, s in enumerate(SENTENCES * 4)])
    sniffed = sniff_data(path)
    assert (sniffed.format, sniffed.header, sniffed.rows) == ("tsv", False, 24)
    assert sniffed.columns == ["col1", "text", "label"]
    assert (sniffed.label, sniffed.label_values, sniffed.text_columns) == ("label", ["0", "1"],
                                                                           ["text"])


def test_a_tsv_header_names_the_columns_and_rows_of_another_width_are_counted(tmp_path):
    lines = ["id\treview\tstars\tclass"] + [
        f"{i}\t{s}\t{i % 5}\t{'pos' if i % 2 else 'neg'}" for i, s in enumerate(SENTENCES * 3)]
    path = _write(tmp_path / "t" / "train.tsv", lines + ["broken row"])
    sniffed = sniff_data(path)
    assert sniffed.header and sniffed.columns == ["id", "review", "stars", "class"]
    # Two columns have few values: the conventional name wins over fewer values.
    assert (sniffed.label, sniffed.label_values) == ("class", ["neg", "pos"])
    assert sniffed.text_columns == ["review"] and sniffed.malformed_rows == [20]


def test_jsonl_keys_are_columns_and_nested_values_are_left_out(tmp_path):
    rows = [{"idx": i, "premise": s, "hypothesis": s[::-1], "meta": {"a": 1},
             "answer": [True, False][i % 2]} for i, s in enumerate(SENTENCES * 3)]
    path = _write(tmp_path / "t" / "train.jsonl", [json.dumps(r) for r in rows])
    sniffed = sniff_data(path)
    assert (sniffed.format, sniffed.label, sniffed.label_values) == ("jsonl", "answer",
                                                                     ["false", "true"])
    assert sniffed.text_columns == ["premise", "hypothesis"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["just one field per line", "and another"], "neither JSON lines nor tab-separated"),
        ([f"{s}\t{s}" for s in SENTENCES], "no column has 2 to 20 distinct short values"),
        ([f"{i}\t{i % 2}" for i in range(10)], "no text column found"),
        (['{"a": 1}', "[1, 2]"], r"train.x:2: expected a JSON object"),
    ],
)
def test_files_that_cannot_be_drafted_say_why(tmp_path, lines, message):
    with pytest.raises(TaskDataError, match=message):
        sniff_data(_write(tmp_path / "t" / "train.x", lines))


def test_placeholder_label_words_are_the_values_when_they_are_words():
    assert label_words(["0", "1"]) == {"0": "label_0", "1": "label_1"}
    assert label_words(["entailment", "not_entailment"]) == {
        "entailment": "entailment", "not_entailment": "not_entailment"}
    assert label_words(["very good", "-1", "label_0", "0"]) == {
        "very good": "label_0", "-1": "label_-1", "label_0": "label_0_", "0": "label_0__"}


def test_the_data_file_must_lie_in_the_task_folder(tmp_path):
    data = tmp_path / "data"
    source = _write(data / "other" / "train.tsv", ["a\t1"])
    with pytest.raises(TaskDataError, match=r"must lie under its data folder .*data/mine/"):
        spec_splits(source, data, "mine")


def test_sibling_dev_and_test_files_become_splits(tmp_path):
    data = tmp_path / "data"
    for name in ("train.tsv", "dev.tsv", "test.tsv", "test.jsonl"):
        _write(data / "mine" / name, ["a\t1"])
    splits = spec_splits(data / "mine" / "train.tsv", data, "mine")
    assert splits == {"train": "mine/train.tsv", "dev": "mine/dev.tsv", "test": "mine/test.tsv"}


@pytest.mark.parametrize("suffix", ["tsv", "jsonl"])
def test_a_draft_is_a_valid_spec_that_loads_its_data(tmp_path, suffix):
    data = tmp_path / "data"
    if suffix == "tsv":
        lines = [f"{s}\t{i % 3}" for i, s in enumerate(SENTENCES * 4)]
    else:
        lines = [json.dumps({"text": s, "label": i % 3}) for i, s in enumerate(SENTENCES * 4)]
    source = _write(data / "mine" / f"train.{suffix}", lines)
    text = draft_spec("mine", sniff_data(source), spec_splits(source, data, "mine"))
    assert "# EDIT" in text and "carve_dev: {from: train" in text
    spec = parse_spec_text("mine", text, "mine.yaml")
    assert spec.labels == {"0": "label_0", "1": "label_1", "2": "label_2"}
    loaded = load_task(spec, data)
    assert len(loaded["train"]) + len(loaded["dev"]) == 24
    assert loaded["train"][0].input.startswith("Text: ")
