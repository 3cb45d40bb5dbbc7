"""Ingest (mirror or hub) and the data version: DVC's own hash of a folder, computed without dvc."""

import filecmp
from pathlib import Path

import pytest
import yaml
from conftest import TOY_SPEC
from toy_mirror import WORDS, snapshot, write_toy

from softprompt.data_version import dataset_version, ingest, write_curves
from softprompt.task_data import load_task
from softprompt.tasks import TaskDataError, load_spec


def _toy_tree(tmp_path: Path) -> tuple[Path, Path]:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy.yaml").write_text(yaml.safe_dump(TOY_SPEC))
    write_toy(tmp_path / "mirror")
    return tasks, tmp_path / "mirror"


def test_ingest_from_mirror_is_byte_identical_and_replaces_old_output(tmp_path):
    tasks, mirror = _toy_tree(tmp_path)
    (tmp_path / "a" / "stale.txt").parent.mkdir()
    (tmp_path / "a" / "stale.txt").write_text("old")
    ingest("toy", tmp_path / "a", "mirror", mirror, tasks)
    ingest("toy", tmp_path / "b", "auto", mirror, tasks)  # no hub source in the spec: the mirror
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert filecmp.cmp(tmp_path / "a/toy/train.jsonl", mirror / "toy/train.jsonl", shallow=False)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert dataset_version(tmp_path / "a") == dataset_version(tmp_path / "b")
    assert not list(tmp_path.glob(".*.ingest"))


def test_ingest_names_the_missing_mirror_file(tmp_path):
    tasks, mirror = _toy_tree(tmp_path)
    (mirror / "toy" / "dev.jsonl").unlink()
    with pytest.raises(
        TaskDataError, match=r"toy\.yaml: split 'dev' file toy/dev\.jsonl not found in mirror"
    ):
        ingest("toy", tmp_path / "out", "mirror", mirror, tasks)
    assert not (tmp_path / "out").exists()


def test_ingest_from_hub_writes_rows_and_a_spec_that_reads_them(tmp_path, monkeypatch):
    import datasets

    tasks, _ = _toy_tree(tmp_path)
    spec = dict(
        TOY_SPEC,
        hub={
            "path": "org/toy",
            "name": "plain",
            "splits": {"train": "train", "test": "validation"},
        },
    )
    (tasks / "toy.yaml").write_text(yaml.safe_dump(spec))
    calls = []

    def fake_load_dataset(path, name, split, revision=None):
        calls.append((path, name, split))
        return [
            {"sentence": f"{split} film {WORDS[i % 2][0]}", "label": i % 2, "idx": i}
            for i in range(20)
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    info = ingest("toy", tmp_path / "raw", "auto", None, tasks)
    assert info["source"] == "hub" and sorted(calls) == [
        ("org/toy", "plain", "train"),
        ("org/toy", "plain", "validation"),
    ]
    data = load_task(load_spec(tmp_path / "raw" / "toy.yaml"), tmp_path / "raw")
    assert {k: len(v) for k, v in data.items()} == {
        "train": 18,
        "dev": 2,
        "test": 20,
    }  # dev carved from train
    assert data["test"][0].input == "Review: validation film awful\nSentiment:"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: auto falls back to the mirror
    assert (
        ingest("toy", tmp_path / "raw2", "auto", tmp_path / "mirror", tasks)["source"] == "mirror"
    )


def test_dataset_version_errors_and_cli(tmp_path, capsys):
    from softprompt.cli import main

    with pytest.raises(FileNotFoundError, match="no_such_dir: not a directory"):
        dataset_version(tmp_path / "no_such_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty directory"):
        dataset_version(tmp_path / "empty")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.txt").write_text("x")
    assert main(["data-version", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out.strip()
    assert (
        printed == dataset_version(tmp_path / "d")
        and printed.endswith(".dir")
        and len(printed) == 36
    )
    (tmp_path / "d" / "y.txt").write_text("y")
    assert dataset_version(tmp_path / "d") != printed
    with pytest.raises(ValueError, match="unknown ingest source 'bogus'"):
        ingest("toy", tmp_path / "o", "bogus")


def test_write_curves_names_a_malformed_log_line(tmp_path):
    step = '{"event": "step", "step": 1, "loss": 0.5}\n'
    evaluation = '{"event": "eval", "step": 1, "score": 0.75, "accuracy": 0.75}\n'
    (tmp_path / "metrics.jsonl").write_text(step + evaluation + "{oops\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:3: malformed JSON"):
        write_curves(tmp_path, tmp_path / "out")
    (tmp_path / "metrics.jsonl").write_text('{"event": "start"}\n' + step + evaluation)
    assert write_curves(tmp_path, tmp_path / "out") == {"loss": 1, "dev": 1}
    assert (tmp_path / "out" / "dev.csv").read_text().splitlines() == [
        "step,score,accuracy",
        "1,0.75,0.75",
    ]
