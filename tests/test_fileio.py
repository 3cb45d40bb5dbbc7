"""Files written completely or not at all: the temp file sits beside the target and never
outlives the write."""

import pytest

from softprompt.fileio import atomic_write, write_temp


def test_write_temp_lands_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    tmp = write_temp(target, b"data")
    assert tmp.parent == target.parent and tmp.read_bytes() == b"data"
    assert tmp.name.startswith(".file.bin.") and tmp.name.endswith(".tmp")
    assert not target.exists()


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")
    atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_a_failed_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "folder"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
