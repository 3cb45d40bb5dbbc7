"""Registry records as text for people (softprompt.registry.tables), on records read back from a
real local registry."""

from __future__ import annotations

import pytest
import torch

from softprompt.registry import open_registry
from softprompt.registry.tables import (
    TaskListing,
    alias_block,
    cell,
    flatten,
    manifest_block,
    short_data_version,
    table,
    tasks_table,
    versions_table,
)

LINEAGE = {
    "base_model": "m",
    "base_model_fingerprint": "sha256:" + "ab" * 32,
    "template": "Review: {sentence}\nSentiment:",
    "label_words": ["negative", "positive"],
    "init": "class_label",
    "dataset_version": "e033906b1a93f2efc7f55e33309cf218.dir",
    "metrics": {"dev": {"score": 0.81, "n": 100}, "test": {"score": 0.805, "n": 200}},
    "hyperparameters": {"lr": 0.3, "prompt": {"length": 2, "init": "class_label"}},
    "data_source": {"kind": "local", "version": "e033906b1a93f2efc7f55e33309cf218.dir"},
}


@pytest.fixture()
def reg(tmp_path):
    """Task `toy` with versions 1-3 (production -> 2, staging -> 3) and task `bare` with one
    unscored version and no alias."""
    reg = open_registry(tmp_path / "reg")
    for _ in range(3):
        reg.publish("toy", torch.randn(2, 4), LINEAGE)
    reg.publish("bare", torch.randn(2, 4), {**LINEAGE, "metrics": {}, "dataset_version": None})
    reg.promote("toy", "production", 1)
    reg.promote("toy", "production", 2)
    reg.promote("toy", "staging", 3)
    return reg


def _listing(reg, task: str) -> TaskListing:
    return TaskListing(reg.list_versions(task), reg.aliases(task))


def _rows(text: str) -> list[list[str]]:
    """The table's lines after its header line, split on runs of two or more spaces."""
    import re

    lines = text.split("\n\n", 1)[-1].splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


def test_cells_and_table_layout():
    """Cells say "-" for nothing, keep a template on one line, and columns line up."""
    assert [cell(None), cell(0.1234567), cell(["a", "b"]), cell([]), cell(True)] == [
        "-", "0.123457", "a, b", "-", "true"]
    assert cell("Review: {sentence}\nSentiment:") == '"Review: {sentence}\\nSentiment:"'
    assert table(["A", "BB"], [["xyz", "1"], ["q", "22"]]) == "A    BB\nxyz  1\nq    22"
    assert flatten({"dev": {"n": 9, "score": 0.5}, "steps": 3, "empty": {}}) == [
        ("dev.n", 9), ("dev.score", 0.5), ("empty", {}), ("steps", 3)]
    assert short_data_version("e033906b1a93f2efc7f55e33309cf218.dir") == "e033906b"
    assert short_data_version("v1.2") == "v1.2" and short_data_version(None) == "-"


def test_tasks_table_has_one_row_per_task(reg):
    text = tasks_table(reg.uri, {t: _listing(reg, t) for t in reg.list_tasks()})
    assert text.startswith(f"registry {reg.uri}\n\n")
    head, bare, toy = _rows(text)
    assert head == ["TASK", "VERSIONS", "NEWEST", "ALIASES", "PRODUCTION DEV", "PRODUCTION TEST"]
    assert bare == ["bare", "1", "1", "-", "-", "-"]
    assert toy == ["toy", "3", "3", "production -> 2, staging -> 3", "0.8100", "0.8050"]
    assert tasks_table("s3://b/p", {}) == "registry s3://b/p: no tasks"


def test_versions_table_has_one_row_per_version(reg):
    text = versions_table(reg.uri, "toy", _listing(reg, "toy"))
    head, *rows = _rows(text)
    assert head == ["VERSION", "CREATED_AT", "PROMPT_LENGTH", "INIT", "DEV", "TEST", "DATA",
                    "ALIASES"]
    created = [m.created_at for m in reg.list_versions("toy")]
    assert rows == [
        ["1", created[0], "2", "class_label", "0.8100", "0.8050", "e033906b", "-"],
        ["2", created[1], "2", "class_label", "0.8100", "0.8050", "e033906b", "production"],
        ["3", created[2], "2", "class_label", "0.8100", "0.8050", "e033906b", "staging"],
    ]
    assert _rows(versions_table(reg.uri, "bare", _listing(reg, "bare")))[1][4:7] == ["-"] * 3
    empty = versions_table(reg.uri, "none", TaskListing([], {}))
    assert empty == f"registry {reg.uri}: task none has no versions"


def test_manifest_block_flattens_metrics_and_lineage(reg):
    m = reg.manifest("toy", "production")
    text = manifest_block(m, reg.uri)
    assert text.startswith(f"task toy, version 2 in registry {reg.uri}\n\nprompt\n")
    lines = {line.split()[0]: line.split(None, 1)[1] for line in text.splitlines()
             if line.startswith("  ")}
    assert lines["shape"] == "[2, 4]" and lines["blob_sha256"] == m.blob_sha256
    assert lines["dataset_version"] == "e033906b1a93f2efc7f55e33309cf218.dir"
    assert lines["data_source.kind"] == "local" and lines["code_version"] == "-"
    assert lines["label_words"] == "negative, positive"
    assert lines["template"] == '"Review: {sentence}\\nSentiment:"'
    assert (lines["dev.score"], lines["dev.n"], lines["test.score"]) == ("0.81", "100", "0.805")
    assert lines["prompt.length"] == "2" and lines["lr"] == "0.3"
    titles = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert titles[1:] == ["prompt", "lineage", "verbalizer", "metrics", "hyperparameters"]


def test_alias_block_lists_the_history(reg):
    reg.promote("toy", "production", 3)
    state = reg.alias("toy", "production")
    title, head, *rows = alias_block(state).splitlines()
    assert title == "alias production -> version 3 (3 moves)"
    assert head.split() == ["SEQ", "VERSION", "PREVIOUS", "MOVED_AT"]
    assert [r.split() for r in rows] == [
        [str(e["seq"]), str(e["version"]), str(e["previous"] or "-"), e["moved_at"]]
        for e in state.history
    ]
    assert [r.split()[:3] for r in rows] == [["1", "1", "-"], ["2", "2", "1"], ["3", "3", "2"]]
    assert alias_block(reg.alias("toy", "staging")).splitlines()[0].endswith("(1 move)")
