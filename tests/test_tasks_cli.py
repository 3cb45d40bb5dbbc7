"""`softprompt tasks list|show|validate|new` show the catalogue table and one spec in full, print
every problem of specs and data on its own line, and draft a spec that validates and trains.
The commands' help examples and the example specs of docs/tasks.md are checked too."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from softprompt.cli import main
from softprompt.tasks import REPO_ROOT, TASKS_DIR, parse_spec


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["tasks", *argv])
    return code, capsys.readouterr().out


def _dirs(task: dict) -> list[str]:
    return ["--tasks-dir", str(task["tasks_dir"]), "--data-dir", str(task["data_dir"])]


def test_list_shows_every_spec_of_the_repository(capsys):
    code, out = _run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "FORMAT", "METRIC", "LABELS", "SPLITS", "STATUS"]
    for path in TASKS_DIR.glob("*.yaml"):
        row = next(line for line in lines if line.startswith(f"{path.stem} "))
        assert row.rstrip().endswith("OK"), row
    assert re.search(r"^sst2 +tsv +accuracy +negative/positive +train, dev, test +OK$", out, re.M)
    assert "qqp      tsv      f1" in out and "dev (carved)" in out


def test_list_marks_a_broken_spec_and_keeps_the_others(toy_task, capsys):
    (toy_task["tasks_dir"] / "broken.yaml").write_text("name: broken\nformat: csv\n")
    code, out = _run(capsys, "list", "--tasks-dir", str(toy_task["tasks_dir"]))
    assert code == 0
    assert re.search(r"^broken .*line 2: field 'format' must be one of .*\(\+\d+ more\)$", out,
                     re.M)
    assert re.search(r"^toy +jsonl +accuracy +negative/positive +train, dev, test +OK$", out,
                     re.M)
    code, out = _run(capsys, "list", "--tasks-dir", str(toy_task["tasks_dir"]), "--format",
                     "json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["toy"]["status"] == "OK" and rows["toy"]["labels"] == ["negative", "positive"]
    assert len(rows["broken"]["problems"]) >= 4  # format, template, label_field, labels...


def test_show_prints_every_field_the_splits_and_an_example(toy_task, capsys):
    code, out = _run(capsys, "show", "toy", *_dirs(toy_task))
    assert code == 0
    for field in ("name", "description", "format", "metric", "positive_label", "template",
                  "template_fields", "label_field", "labels", "label_words", "splits", "tsv",
                  "skip_malformed_rows", "carve_dev", "hub", "spec_file", "digest"):
        assert re.search(rf"^{field} ", out, re.M), field
    assert re.search(r"^labels +0 -> negative, 1 -> positive$", out, re.M)
    assert re.search(r"^train +96 +0 +\S+/toy/train\.jsonl$", out, re.M)
    assert re.search(r"^test +32 ", out, re.M)
    assert re.search(r"example \(.*train\.jsonl:1\):\n  input:  Review: .*\n +Sentiment:\n"
                     r"  target: (negative|positive)", out)
    code, out = _run(capsys, "show", "toy", *_dirs(toy_task), "--format", "json")
    shown = json.loads(out)
    assert shown["spec"]["template_fields"] == ["sentence"]
    assert [s["examples"] for s in shown["data"]["splits"]] == [96, 32, 32]


def test_show_counts_skipped_rows_and_names_the_carved_split(tmp_path, capsys):
    shutil.copytree(TASKS_DIR, tmp_path / "tasks", ignore=shutil.ignore_patterns("[!q]*.yaml"))
    (tmp_path / "data" / "qqp").mkdir(parents=True)
    rows = ["1\t2\t3\tfirst question\tsecond question 1"]  # the label joined to the text
    rows += [f"{i}\t{i}\t{i}\tquestion {i}?\tanother {i}?\t{i % 2}" for i in range(20)]
    (tmp_path / "data" / "qqp" / "train_subset.tsv").write_text("\n".join(rows) + "\n")
    argv = ["--tasks-dir", str(tmp_path / "tasks"), "--data-dir", str(tmp_path / "data")]
    code, out = _run(capsys, "show", "qqp", *argv)
    assert code == 0
    assert re.search(r"^train +18 +1 +\S+train_subset\.tsv$", out, re.M)
    assert re.search(r"^dev +2 +0 +carved from train", out, re.M)


def test_show_reports_missing_data_and_exits_1(toy_task, tmp_path, capsys):
    code, out = _run(capsys, "show", "toy", "--tasks-dir", str(toy_task["tasks_dir"]),
                     "--data-dir", str(tmp_path / "nowhere"))
    assert code == 1
    assert re.search(r"^error: task toy: data file not found: \S+/nowhere/toy/\w+\.jsonl$", out,
                     re.M)


BROKEN = """\
name: toy
format: jsonl
splits:
  train: toy/train.jsonl
  valid: toy/dev.jsonl
template: "Review: {sentence!r}"
label_field: label
labels: {"0": "yes", "1": "yes"}
carve-dev: {from: train}
"""


def test_validate_reports_each_problem_of_a_spec_on_its_own_line(toy_task, capsys):
    toy_task["spec_path"].write_text(BROKEN)
    code, out = _run(capsys, "validate", "toy", *_dirs(toy_task))
    assert code == 1
    where = re.escape(str(toy_task["spec_path"]))
    lines = out.splitlines()
    assert re.fullmatch(rf"warning: {where}:9: unknown field 'carve-dev' is ignored; .*", lines[0])
    assert re.fullmatch(rf"{where}:3: field 'splits' has unknown split 'valid'; .*", lines[1])
    assert re.fullmatch(rf"{where}:6: field 'template': field {{sentence!r}} has a conversion .*",
                        lines[2])
    assert re.fullmatch(rf"{where}:8: field 'labels': label word\(s\) \['yes'\] name more .*",
                        lines[3])
    assert lines[4] == "1 task(s) checked: 0 valid, 1 with problems (3 problem(s))"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "other"}, r":1: field 'name' is 'other', but the task is 'toy'"),
        ({"metric": "f1"}, r"metric f1 needs 'positive_label'"),
        ({"tsv": {"header": False}}, r"a tsv without header needs 'tsv.columns'"),
        ({"carve_dev": {"fraction": 0.1}}, r"'carve_dev' and a 'dev' file are exclusive"),
        ({"hub": {"path": ""}}, r":\d+: field 'hub.path' must be a dataset name"),
    ],
)
def test_validate_names_fields_that_depend_on_others(toy_task, capsys, changes, message):
    from conftest import TOY_SPEC

    raw = TOY_SPEC | changes
    if "tsv" in changes:
        raw["format"] = "tsv"
    toy_task["spec_path"].write_text(yaml.safe_dump(raw, sort_keys=False))
    code, out = _run(capsys, "validate", "toy", *_dirs(toy_task))
    assert code == 1 and re.search(message, out), out


def test_validate_reads_the_data_and_reports_each_bad_file(toy_task, capsys):
    data = toy_task["data_dir"] / "toy"
    (data / "dev.jsonl").write_text('{"sentence": "fine", "label": 1}\n{"sentence": "x"\n')
    (data / "test.jsonl").write_text('{"sentence": "fine", "label": 7}\n')
    code, out = _run(capsys, "validate", *_dirs(toy_task))
    assert code == 1
    assert re.search(r"^\S+/toy/dev\.jsonl:2: malformed JSON: .*$", out, re.M)
    assert re.search(r"^\S+/toy/test\.jsonl:1: field 'label' has unknown label '7'; .*$", out,
                     re.M)
    assert "toy/train.jsonl" not in out


def test_validate_passes_valid_tasks_and_lists_unknown_ones(toy_task, capsys):
    code, out = _run(capsys, "validate", *_dirs(toy_task))
    assert (code, out.splitlines()[0]) == (0, "ok: toy: train 96, dev 32, test 32 examples")
    code, out = _run(capsys, "validate", "toy", "nope", *_dirs(toy_task))
    assert code == 1 and re.search(r"^task spec not found: \S+nope\.yaml \(available: toy\)$",
                                   out, re.M)


def _toy_lines(fmt: str) -> list[str]:
    from conftest import _toy_rows

    rows = _toy_rows(96, 1)
    if fmt == "tsv":
        return [f"{r['idx']}\t{r['sentence']}\t{r['label']}" for r in rows]
    return [json.dumps({"review": r["sentence"], "sentiment": ["neg", "pos"][r["label"]],
                        "idx": r["idx"]}) for r in rows]


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_new_drafts_a_spec_that_validates_and_trains(tiny_causal_dir, tmp_path, capsys, fmt):
    """A headerless tsv and a jsonl file become specs that `softprompt train` runs on."""
    data, tasks = tmp_path / "data", tmp_path / "tasks"
    source = data / "mine" / f"train.{fmt}"
    source.parent.mkdir(parents=True)
    source.write_text("\n".join(_toy_lines(fmt)) + "\n")
    dirs = ["--tasks-dir", str(tasks), "--data-dir", str(data)]
    code, out = _run(capsys, "new", "mine", "--from", str(source), *dirs)
    assert code == 0, out
    assert "ok: mine: train 86, dev 10 examples" in out
    spec = yaml.safe_load((tasks / "mine.yaml").read_text())
    assert spec["splits"] == {"train": f"mine/train.{fmt}"} and spec["carve_dev"]["from"]
    if fmt == "tsv":
        assert spec["tsv"] == {"header": False, "columns": ["col1", "text", "label"]}
        assert spec["labels"] == {"0": "label_0", "1": "label_1"}
    else:
        assert spec["label_field"] == "sentiment" and spec["labels"] == {"neg": "neg",
                                                                        "pos": "pos"}
    assert _run(capsys, "validate", "mine", *dirs)[0] == 0
    argv = ["train", "--task", str(tasks / "mine.yaml"), "--data-dir", str(data), "--model",
            str(tiny_causal_dir), "--run-dir", str(tmp_path / "run"), "--max-steps", "2",
            "--prompt-length", "4", "--train-batch-size", "8", "--micro-batch-size", "8",
            "--eval-every", "2", "--eval-max-examples", "8", "--no-progress"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2


def test_new_refuses_to_overwrite_or_to_read_outside_the_task_folder(toy_task, tmp_path, capsys):
    source = toy_task["data_dir"] / "toy" / "train.jsonl"
    before = toy_task["spec_path"].read_text()
    assert main(["tasks", "new", "toy", "--from", str(source), *_dirs(toy_task)]) == 2
    assert "toy.yaml exists" in capsys.readouterr().err
    assert toy_task["spec_path"].read_text() == before
    assert main(["tasks", "new", "other", "--from", str(source), *_dirs(toy_task)]) == 2
    assert re.search(r"must lie under its data folder \S+/data/other/", capsys.readouterr().err)
    assert main(["tasks", "new", "Bad Name", "--from", str(source), *_dirs(toy_task)]) == 2
    assert "field 'name' must match" in capsys.readouterr().err
    assert sorted(p.name for p in toy_task["tasks_dir"].iterdir()) == ["toy.yaml"]


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["validate"], ["new"]])
def test_every_command_has_an_example_in_its_help(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main(["tasks", *command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    command_line = "softprompt tasks " + (command[0] if command else "")
    assert re.search(r"^examples?:\n(  .*\n)*  " + command_line, out, re.M), out


def _doc_specs() -> list[str]:
    text = (REPO_ROOT / "docs" / "tasks.md").read_text()
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_docs_tasks_md_example_specs_parse():
    """Every ```yaml block of docs/tasks.md is a valid spec."""
    blocks = _doc_specs()
    assert len(blocks) >= 4
    formats = set()
    for i, block in enumerate(blocks):
        spec = parse_spec(yaml.safe_load(block), f"docs/tasks.md yaml block {i + 1}")
        formats.add((spec.format, spec.tsv_header))
        if spec.carve_dev:
            assert "dev" not in spec.splits
    assert {("jsonl", True), ("tsv", True), ("tsv", False), ("multirc", True)} <= formats
    assert any(yaml.safe_load(b).get("carve_dev") for b in blocks)


def test_docs_tasks_md_names_every_spec_field():
    from softprompt.tasks_cli import SPEC_FIELDS

    text = (REPO_ROOT / "docs" / "tasks.md").read_text()
    for field in (*SPEC_FIELDS, "tsv.header", "tsv.columns"):
        assert f"`{field}`" in text, field
    assert Path(REPO_ROOT / "docs" / "tasks.md").stat().st_size < 40_000
